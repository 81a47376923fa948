-- Part 7: an application's task queue.
--
-- Columns of a task (all metadata-only additions: a constant default is stored
-- in the catalog, so no row is rewritten on a large table):
--   task                the registered function's name (NULL: the default handler)
--   queue               the queue it is routed to
--   priority            higher runs first within its queue
--   unique_key          while a task with this key is pending or running, no other
--                       task with the same key is inserted (index in 007)
--   cancel_requested_at `taskworker cancel` asked a running task to stop; its holder
--                       writes 'cancelled' (the status is not changed under it)
ALTER TABLE tasks
    ADD COLUMN task                text,
    ADD COLUMN queue               text    NOT NULL DEFAULT 'default',
    ADD COLUMN priority            integer NOT NULL DEFAULT 0,
    ADD COLUMN unique_key          text,
    ADD COLUMN cancel_requested_at timestamptz;

-- Every running `serve` process, kept fresh by its heartbeat: what it serves
-- (queues NULL: every queue), its periodic schedules (name -> "cron ..." or
-- "every N"), and when it was last seen. Rows of processes gone for long are
-- deleted by the others.
CREATE TABLE taskworker_processes (
    holder          text PRIMARY KEY,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    queues          text[],
    tasks           text[]      NOT NULL,
    default_handler boolean     NOT NULL,
    schedules       jsonb       NOT NULL DEFAULT '{}',
    lease_seconds   float8      NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    seen_at         timestamptz NOT NULL DEFAULT now()
);

-- Queues paused with `taskworker pause`: no process claims from them.
CREATE TABLE taskworker_paused_queues (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- One row per tick of a periodic task ever enqueued, written in the transaction
-- that inserts the tick's task: its primary key makes each tick enqueued once
-- across every process, and it outlives the task row (pruning tasks does not
-- free a tick, unlike a unique_key).
CREATE TABLE taskworker_ticks (
    task        text        NOT NULL,
    tick        timestamptz NOT NULL,
    task_id     bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, tick)
);

-- Concurrency limits (max_running): one row per slot of a limited task name. A
-- claim of such a task takes a free slot in the same statement; the slot is
-- leased like the task (locked_by, locked_until), renewed by the heartbeat, and
-- freed by the task's outcome or when its lease runs out (a holder killed -9).
CREATE TABLE taskworker_slots (
    task         text    NOT NULL,
    slot         integer NOT NULL,
    task_id      bigint,
    locked_by    text,
    locked_until timestamptz,
    PRIMARY KEY (task, slot)
);
