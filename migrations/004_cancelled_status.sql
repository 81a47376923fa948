-- `taskworker cancel` ends a pending task in the new status 'cancelled'. A CHECK
-- constraint cannot be altered in place: drop it and add it again, extended.
-- NOT VALID skips re-checking every existing row (they all passed the narrower
-- check already), so the table is locked only for an instant on a large table;
-- rows inserted or updated from now on are checked as usual.
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'in_progress', 'done', 'error', 'cancelled')) NOT VALID;
