-- A task whose worker was lost MAX_RESCUES times gets its last run alone in its
-- process (run_alone: set by the rescue, cleared by the claim that runs it), so
-- that if the process dies again only that task is charged and parked, not the
-- innocent tasks that ran beside it. Few rows are ever flagged: a small partial
-- index finds them.
ALTER TABLE tasks ADD COLUMN run_alone boolean NOT NULL DEFAULT false;

CREATE INDEX tasks_run_alone_idx ON tasks (run_at, id) WHERE run_alone;
