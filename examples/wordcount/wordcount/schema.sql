-- The example's own table, next to taskworker's `tasks` in the same database.
-- Applied by `python -m wordcount.migrate` (or: psql "$DATABASE_URL" -f schema.sql);
-- safe to run again. No foreign key to tasks: `taskworker prune` deletes finished
-- tasks, and the counts should outlive them.
CREATE TABLE IF NOT EXISTS word_counts (
    task_id    bigint PRIMARY KEY,
    words      integer NOT NULL,
    counted_at timestamptz NOT NULL DEFAULT now()
);

-- The named tasks' tables (wordcount.tasks): the running total (`add` updates it
-- in its task's bound transaction: once per task, however often it runs), and
-- the periodic reports.
CREATE TABLE IF NOT EXISTS word_totals (
    words bigint NOT NULL
);
INSERT INTO word_totals (words) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM word_totals);
CREATE TABLE IF NOT EXISTS word_reports (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    words       bigint NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now()
);
