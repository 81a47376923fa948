-- taskworker: no transaction
-- A workflow's tasks, by workflow: `status --workflow`, the dashboard's filter,
-- `taskworker show` (a task's parents), cancelling a workflow, and a group
-- callback's release (its parents' results). Partial: tasks outside a workflow
-- add no entry, so the no-workflow path pays nothing for it. Built
-- CONCURRENTLY (see 007_claim_indexes.sql).
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_workflow_idx
    ON tasks (workflow_id, id) WHERE workflow_id IS NOT NULL;
