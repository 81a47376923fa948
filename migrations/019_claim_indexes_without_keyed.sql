-- taskworker: no transaction
-- The claim indexes of 007 without the keyed calls (format 3, migration 017):
-- those are claimed through tasks_key_claim_idx, key by key, and a key's backlog
-- in the ordinary indexes was walked over by every ordinary claim of its queue
-- (a saturated key with 20,000 pending tasks took a third off other keys'
-- throughput). Every claim since migration 012 reads `format <= 2`, so it uses
-- these as it used the old ones. Each is built CONCURRENTLY under a new name,
-- the old one dropped CONCURRENTLY, and the new one renamed to the old name;
-- each statement may run again after an interrupted run.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_queue_claim_idx_019
    ON tasks (queue, priority DESC, run_at, id) WHERE status = 'pending' AND format <= 2;

DROP INDEX CONCURRENTLY IF EXISTS tasks_queue_claim_idx;

ALTER INDEX IF EXISTS tasks_queue_claim_idx_019 RENAME TO tasks_queue_claim_idx;

CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_name_claim_idx_019
    ON tasks (queue, (coalesce(task, '')), priority DESC, run_at, id)
    WHERE status = 'pending' AND format <= 2;

DROP INDEX CONCURRENTLY IF EXISTS tasks_name_claim_idx;

ALTER INDEX IF EXISTS tasks_name_claim_idx_019 RENAME TO tasks_name_claim_idx;
