-- Wake-ups that do not cap producers (part 20). Every commit that sends a NOTIFY
-- takes a cluster-wide lock for its commit, so one-row inserts that all notify
-- commit one at a time. A busy process does not need the notification (its
-- claims come back full and it claims again at once); only a sleeping one does.
-- So the insert trigger now notifies only while some process says it sleeps.
--
-- `asleep`: the process may be sleeping until a NOTIFY wakes it. A process sets
-- it before its last look at the table (process_asleep) and clears it when a
-- claim comes back full (process_awake). The default is true, so the rows of
-- processes that know nothing of it (the versions before this one, during a
-- rolling deploy) always ask for a notification: they are never stranded, and
-- producers pay the old cost only while such a process runs.
ALTER TABLE taskworker_processes ADD COLUMN asleep boolean NOT NULL DEFAULT true;

-- No lost wake-up: a process marks itself asleep holding advisory lock
-- 7261835002 exclusively (tried, never waited for: a producer is never held up
-- behind it), then claims once more before it sleeps. The trigger takes the lock
-- shared before it looks for a sleeper, and keeps it until its transaction ends.
-- So either the producer's look comes after the mark was committed (it sees it
-- and notifies), or the producer held the lock while the process tried to mark
-- (the mark fails and the process polls until a mark succeeds), or the producer
-- committed before the mark (and the process's claim after the mark sees the
-- row). Under REPEATABLE READ or SERIALIZABLE the look would use the snapshot of
-- the transaction's start, which may predate a mark: such a transaction always
-- notifies.
--
-- A full notification queue (a listener that stopped reading holds it back)
-- would make the commit fail: the trigger does not notify once
-- pg_notification_queue_usage() reaches taskworker.notify_queue_limit (0.5 by
-- default, a fraction of the queue; a setting, for tests and for the cautious),
-- and the listeners, finding the queue that full, poll instead.
CREATE OR REPLACE FUNCTION taskworker_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7261835002);
    IF (current_setting('transaction_isolation') <> 'read committed'
        OR EXISTS (SELECT 1 FROM taskworker_processes WHERE asleep))
       AND pg_notification_queue_usage()
           < coalesce(nullif(current_setting('taskworker.notify_queue_limit', true), ''),
                      '0.5')::float8 THEN
        PERFORM pg_notify('taskworker_tasks', '');
    END IF;
    RETURN NULL;
END;
$$;
