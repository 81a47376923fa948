-- taskworker: no transaction
-- Built CONCURRENTLY, so enqueueing and serving go on while a large table is
-- indexed; the runner sends these statements one by one, outside a transaction,
-- and drops and rebuilds an index an interrupted run left INVALID.
--
-- The claim reads each served queue in (priority DESC, run_at, id) order: the
-- queue is an index condition, so a queue this process does not serve costs it
-- nothing however long its backlog.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_queue_claim_idx
    ON tasks (queue, priority DESC, run_at, id) WHERE status = 'pending';

-- A queue that also holds tasks of names this process does not know (a rolling
-- deploy added them) is read name by name, the name an index condition too; the
-- same index lists which (queue, name) pairs have pending tasks at all.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_name_claim_idx
    ON tasks (queue, (coalesce(task, '')), priority DESC, run_at, id) WHERE status = 'pending';

-- unique_key: at most one live (pending or running) task per key.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tasks_unique_key_idx
    ON tasks (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'in_progress');
