-- The serve process that exports the gauges about the whole tasks table (queue
-- depth, backlog by queue and by task name): the holder of this one row, which it
-- renews at every sample and another process takes over only once locked_until
-- has passed (or the holder deleted it, shutting down). Every process exporting
-- them would make a sum() over the processes count the table once per process.
-- A row rather than an advisory lock: a session lock belongs to one server
-- connection, which PgBouncer in transaction mode hands to other clients.
CREATE TABLE IF NOT EXISTS taskworker_metrics_reporter (
    one          boolean     PRIMARY KEY DEFAULT true CHECK (one),
    holder       text        NOT NULL,
    locked_until timestamptz NOT NULL
);
