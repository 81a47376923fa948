-- When the handler of a task's current hold started (NULL: claimed, not started
-- yet: it waits in its process's local queue). A claim clears it; the worker's
-- start is written by its process's next heartbeat, which renews the row's
-- lease anyway (at once, before the handler runs, for a task once lost
-- unstarted: see below), or by the task's outcome. Status, the
-- dashboard and the periodic tasks' skip line call a task running only once
-- started_at is set.
--
-- A rescue charges a lost worker (rescues, toward MAX_RESCUES) only to a task
-- whose run started; one lost before it started goes back uncharged, its
-- attempt not counted, and counts in unstarted_rescues. From then on that
-- task's start is written before its handler runs, so a handler that kills its
-- process at once is charged every time after the first and is still parked
-- after MAX_RESCUES.
ALTER TABLE tasks
    ADD COLUMN started_at        timestamptz,
    ADD COLUMN unstarted_rescues integer NOT NULL DEFAULT 0;
