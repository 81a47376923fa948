-- The example's own table, next to taskworker's `tasks` in the same database.
-- Applied by `python -m wordcount.migrate` (or: psql "$DATABASE_URL" -f schema.sql);
-- safe to run again. No foreign key to tasks: `taskworker prune` deletes finished
-- tasks, and the counts should outlive them.
CREATE TABLE IF NOT EXISTS word_counts (
    task_id    bigint PRIMARY KEY,
    words      integer NOT NULL,
    counted_at timestamptz NOT NULL DEFAULT now()
);
