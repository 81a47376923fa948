-- Every statement taskworker sends, by name. Each block starts with
-- "-- name: <name>" and a line saying what it is for. Loaded once by sql.py, and
-- sent only through the typed functions of tasks.py and migrations.py.

-- name: table_exists
-- Does the tasks table exist? (serve refuses to start without it)
SELECT to_regclass('tasks') IS NOT NULL;

-- name: claim
-- Take up to %(limit)s due pending tasks, oldest first, for this process, in one
-- statement. SKIP LOCKED: two claimers never wait on, nor take, the same row.
-- %(alone)s false: the ordinary claim, leaving out tasks that must run alone.
-- %(alone)s true: one such task (its worker was lost MAX_RESCUES times), for a
-- process that holds no other, so that if the process dies running it no other
-- task is charged with the loss; the flag is cleared, and if the process dies
-- again the rescue parks the task.
-- Returns id, payload, attempts, rescues and the payload's size in bytes; a
-- payload over %(inline_bytes)s is not returned (NULL): octet_length reads a
-- stored value's size without loading it, and the fetcher decides what to load.
WITH picked AS (
    SELECT id FROM tasks
    WHERE status = 'pending' AND run_at <= now() AND run_alone = %(alone)s
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status = 'in_progress',
    run_alone = false,
    locked_by = %(holder)s,
    locked_until = now() + %(lease)s * interval '1 second',
    attempts = t.attempts + 1,
    updated_at = now()
FROM picked
WHERE t.id = picked.id
RETURNING t.id,
          CASE WHEN octet_length(t.payload) <= %(inline_bytes)s THEN t.payload END,
          t.attempts, t.rescues, coalesce(octet_length(t.payload), 0);

-- name: payloads
-- The payloads of tasks %(ids)s that %(holder)s holds: the ones the claim left
-- unloaded for their size, loaded within the fetcher's byte budget.
SELECT id, payload FROM tasks
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(holder)s AND status = 'in_progress';

-- name: rescue
-- Tasks whose lease ran out belong to a process that stopped responding: put them
-- back to pending, or park them in error once their worker was lost too often.
-- Never a task the rescuer itself still holds (%(holder)s, %(held)s): a live
-- process gives back what it can no longer keep, without charging a rescue.
-- A task back to pending for its last chance (lost MAX_RESCUES times) will run alone.
WITH lost AS (
    SELECT id FROM tasks
    WHERE status = 'in_progress' AND locked_until < now()
      AND NOT (locked_by = %(holder)s AND id = ANY(%(held)s::bigint[]))
    ORDER BY locked_until
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET rescues = t.rescues + 1,
    status = CASE WHEN t.rescues + 1 > %(max_rescues)s THEN 'error' ELSE 'pending' END,
    error = CASE WHEN t.rescues + 1 > %(max_rescues)s
                 THEN 'abandoned: worker lost ' || (t.rescues + 1) || ' times'
                 ELSE t.error END,
    run_alone = t.rescues + 1 = %(max_rescues)s,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM lost
WHERE t.id = lost.id
RETURNING t.id, t.status;

-- name: alone_waiting
-- Is a task that must run alone due? (The process then drains and claims it.)
SELECT EXISTS (SELECT 1 FROM tasks
               WHERE run_alone AND status = 'pending' AND run_at <= now());

-- name: next_due
-- Seconds until the next retry is due and until the next lease expires (NULL: none).
SELECT extract(epoch FROM
           (SELECT min(run_at) FROM tasks WHERE status = 'pending' AND run_at > now()) - now()),
       extract(epoch FROM
           (SELECT min(locked_until) FROM tasks WHERE status = 'in_progress') - now());

-- name: heartbeat
-- Extend the lease of every task this process holds, and return the ones it still
-- holds; the ids not returned were taken away (rescued). SKIP LOCKED: a row locked
-- right now is being written by our completer (or rescued), so waiting for it
-- could deadlock; the final SELECT reads the statement's snapshot, so a skipped
-- row that is still ours is not mistaken for a lost one.
WITH extended AS (
    UPDATE tasks
    SET locked_until = now() + %(lease)s * interval '1 second'
    WHERE id IN (SELECT id FROM tasks
                 WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(holder)s
                   AND status = 'in_progress'
                 FOR UPDATE SKIP LOCKED)
    RETURNING id
)
SELECT id FROM tasks
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(holder)s AND status = 'in_progress';

-- name: complete
-- Write many outcomes at once. Fenced: a row is written only while this process
-- still holds that attempt, and the (id, attempt) pairs written are returned: a
-- batch may hold a stale attempt's outcome beside the new attempt's of the same
-- task, and only the one that matched may be reported. status 'pending' with given_back gives a task back
-- untouched (the attempt is not counted); with a delay it schedules a retry.
UPDATE tasks AS t
SET status = v.status,
    result = v.result,
    error = coalesce(v.error, t.error),
    attempts = t.attempts - CASE WHEN v.given_back THEN 1 ELSE 0 END,
    run_at = CASE WHEN v.delay IS NULL THEN t.run_at
                  ELSE now() + v.delay * interval '1 second' END,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
            %(results)s::text[], %(errors)s::text[], %(delays)s::float8[],
            %(given_back)s::bool[])
     AS v(id, attempt, status, result, error, delay, given_back)
WHERE t.id = v.id
  AND t.attempts = v.attempt
  AND t.locked_by = %(holder)s
  AND t.status = 'in_progress'
RETURNING v.id, v.attempt;

-- name: outcome_rows
-- What the rows %(ids)s say now: after a completion whose reply was lost with the
-- connection, to tell an outcome that was written from one that was fenced off.
SELECT id, status, attempts, rescues, locked_by FROM tasks WHERE id = ANY(%(ids)s::bigint[]);

-- name: give_back_orphans
-- Give back tasks this process holds in the database but does not know of (a
-- claim whose reply was lost with the connection): after a reconnect, and at the
-- end of shutdown (with %(known)s empty).
UPDATE tasks
SET status = 'pending', attempts = attempts - 1,
    locked_by = NULL, locked_until = NULL, updated_at = now()
WHERE status = 'in_progress' AND locked_by = %(holder)s
  AND NOT (id = ANY(%(known)s::bigint[]))
RETURNING id;

-- name: wake_others
-- Tell idle fetchers (of every process) that tasks became claimable.
SELECT pg_notify('taskworker_tasks', '');

-- name: listen
-- Receive the notifications of wake_others and of the insert trigger (migration 003).
LISTEN taskworker_tasks;

-- name: notify
-- The listener's check that its LISTEN works: a notification it should receive.
SELECT pg_notify('taskworker_tasks', %(payload)s);

-- name: backend_pid
-- Which server process runs this statement (a pooler in between changes it).
SELECT pg_backend_pid();

-- name: ping
-- Is the connection still alive? (The listener asks after a long silence.)
SELECT 1;

-- name: seed
-- Insert %(count)s sample tasks "Test task 1" ... "Test task N".
INSERT INTO tasks (payload)
SELECT 'Test task ' || n FROM generate_series(1, %(count)s) AS n;

-- name: migrations_table
-- The record of applied migrations (the only table not created by a migration).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
-- One migrator at a time, across processes and hosts.
SELECT pg_advisory_lock(7261835001);

-- name: migrations_unlock
-- Let the next migrator in.
SELECT pg_advisory_unlock(7261835001);

-- name: migrations_table_exists
-- Has any migration ever run here?
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: migrations_applied
-- Versions already applied.
SELECT version FROM schema_migrations;

-- name: migration_record
-- Record one applied migration, in the migration's own transaction.
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: enqueue
-- Insert one pending task per element of %(payloads)s, in the array's order (ids
-- increase in that order); all due at %(run_at)s, or now() + %(delay)s, or now().
INSERT INTO tasks (payload, run_at)
SELECT p.payload,
       coalesce(%(run_at)s::timestamptz, now() + coalesce(%(delay)s::interval, interval '0'))
FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS p(payload, n)
ORDER BY p.n
RETURNING id;

-- name: cutoff
-- The database's now(), and now() minus %(seconds)s (NULL when no age is given):
-- fixed once per command so that batches agree on "older than".
SELECT now(), now() - %(seconds)s * interval '1 second';

-- name: status_summary
-- One scan for the status overview: counts by status, pending tasks scheduled for
-- later, seconds the oldest due pending task has waited (since its run_at), tasks
-- with a rescue changed in the last hour, and pending tasks after a failed or
-- lost attempt (attempts > 0: waiting for a retry).
SELECT count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'in_progress'),
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'error'),
       count(*) FILTER (WHERE status = 'cancelled'),
       count(*) FILTER (WHERE status = 'pending' AND run_at > now()),
       extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending'
                                                      AND run_at <= now())),
       count(*) FILTER (WHERE rescues > 0 AND updated_at > now() - interval '1 hour'),
       count(*) FILTER (WHERE status = 'pending' AND attempts > 0)
FROM tasks;

-- name: status_holders
-- Running tasks per process holding them, with the seconds left on the soonest
-- lease to expire (negative: expired, the holder has stopped renewing).
SELECT locked_by, count(*), extract(epoch FROM min(locked_until) - now())
FROM tasks
WHERE status = 'in_progress'
GROUP BY locked_by
ORDER BY count(*) DESC, locked_by;

-- name: status_errors
-- The %(limit)s most frequent error messages among tasks ended in error.
SELECT error, count(*)
FROM tasks
WHERE status = 'error'
GROUP BY error
ORDER BY count(*) DESC, error
LIMIT %(limit)s;

-- name: task_get
-- One task, every column (`taskworker show`).
SELECT * FROM tasks WHERE id = %(id)s;

-- name: task_states
-- Status and holder of the tasks %(ids)s, to explain why a command left them alone.
SELECT id, status, locked_by FROM tasks WHERE id = ANY(%(ids)s::bigint[]);

-- name: retry
-- Put up to %(limit)s tasks in error back to pending, due now, as if new: attempts
-- and rescues start again from 0 (a fresh retry and rescue budget); the last error
-- text is kept. Only the tasks %(ids)s when given, only those that ended at or
-- after %(since)s when given, never one that ended after %(before)s (the command's
-- start: a task failing again meanwhile is not retried twice).
WITH picked AS (
    SELECT id FROM tasks
    WHERE status = 'error'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s::timestamptz)
      AND updated_at <= %(before)s
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status = 'pending',
    attempts = 0,
    rescues = 0,
    run_alone = false,
    run_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM picked
WHERE t.id = picked.id
RETURNING t.id;

-- name: cancel
-- Cancel the tasks %(ids)s that are pending; running and finished ones are left alone.
UPDATE tasks
SET status = 'cancelled', updated_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending'
RETURNING id;

-- name: prune
-- Delete up to %(limit)s finished tasks (status in %(statuses)s) last changed
-- before %(before)s, with ids above %(after)s, lowest ids first. Small batches keep
-- each transaction's row locks few and short; the conditions are checked again on
-- the locked rows, so a task retried meanwhile is not deleted.
DELETE FROM tasks
WHERE id IN (
        SELECT id FROM tasks
        WHERE status = ANY(%(statuses)s::text[]) AND updated_at < %(before)s
          AND id > %(after)s
        ORDER BY id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
  AND status = ANY(%(statuses)s::text[]) AND updated_at < %(before)s
RETURNING id;

-- name: depth_active
-- Queue depth for the metrics: pending and in-progress tasks, counted through
-- their partial indexes (as cheap as those sets are small), and the table's size
-- now (pages) and at the last ANALYZE (reltuples over relpages), to choose how to
-- count the finished ones.
SELECT (SELECT count(*) FROM tasks WHERE status = 'pending'),
       (SELECT count(*) FROM tasks WHERE status = 'in_progress'),
       pg_relation_size(c.oid) / current_setting('block_size')::bigint,
       c.reltuples::float8, c.relpages
FROM pg_class AS c
WHERE c.oid = 'tasks'::regclass;

-- name: depth_finished
-- Exact counts of finished tasks by status: only run while the table is small.
SELECT status, count(*)
FROM tasks
WHERE status IN ('done', 'error', 'cancelled')
GROUP BY status;

-- name: status_frequencies
-- The planner's share of each status (from the last ANALYZE), to estimate the
-- finished counts of a large table without scanning it.
SELECT s.most_common_vals::text::text[], s.most_common_freqs
FROM pg_stats AS s
JOIN pg_class AS c ON c.relname = s.tablename
JOIN pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
WHERE c.oid = 'tasks'::regclass AND s.attname = 'status';

-- name: process_register
-- Record (or refresh) this serve process in taskworker_processes: what it serves
-- and how long its heartbeat may go quiet (lease_seconds) before it counts as gone.
INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, default_handler,
                                  schedules, lease_seconds)
VALUES (%(holder)s, %(host)s, %(pid)s, %(queues)s::text[], %(tasks)s::text[],
        %(default_handler)s, %(schedules)s::jsonb, %(lease_seconds)s)
ON CONFLICT (holder) DO UPDATE
SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    tasks = excluded.tasks, default_handler = excluded.default_handler,
    schedules = excluded.schedules, lease_seconds = excluded.lease_seconds,
    seen_at = now();

-- name: process_touch
-- The heartbeat's sign of life: one row by primary key. No row returned: the
-- row is gone (reaped while this process was frozen): the caller registers again.
UPDATE taskworker_processes SET seen_at = now() WHERE holder = %(holder)s RETURNING 1;

-- name: process_unregister
-- A clean shutdown removes its own row.
DELETE FROM taskworker_processes WHERE holder = %(holder)s;

-- name: process_reap
-- Remove the rows of processes not seen for ten of their leases (killed, or their
-- host lost): nothing reads them any more, live processes refresh theirs.
DELETE FROM taskworker_processes
WHERE seen_at < now() - 10 * lease_seconds * interval '1 second'
RETURNING holder;

-- name: process_live
-- Processes seen within two of their leases, oldest first, with the seconds since
-- they started and since they were last seen.
SELECT holder, host, pid, queues, tasks, default_handler, schedules, lease_seconds,
       started_at, extract(epoch FROM now() - started_at),
       extract(epoch FROM now() - seen_at)
FROM taskworker_processes
WHERE seen_at + 2 * lease_seconds * interval '1 second' > now()
ORDER BY started_at, holder;

-- name: queue_pause
-- Pause the queues %(queues)s (no process claims from them); the ones newly paused.
INSERT INTO taskworker_paused_queues (queue)
SELECT DISTINCT q FROM unnest(%(queues)s::text[]) AS q
ON CONFLICT (queue) DO NOTHING
RETURNING queue;

-- name: queue_resume
-- Resume the queues %(queues)s; the ones that were paused.
DELETE FROM taskworker_paused_queues WHERE queue = ANY(%(queues)s::text[]) RETURNING queue;

-- name: queue_paused
-- Every paused queue, with the seconds since it was paused.
SELECT queue, paused_at, extract(epoch FROM now() - paused_at)
FROM taskworker_paused_queues
ORDER BY queue;

-- name: status_backlog
-- Pending and running tasks per (queue, task name): due, scheduled for later,
-- running, and the seconds the oldest due one has waited. Reads only pending and
-- in-progress rows, each set through its partial index (a name of '' is a task
-- without a name: names are never empty), never the finished ones.
WITH live AS (
    SELECT queue, coalesce(task, '') AS name, run_at, true AS pending
    FROM tasks WHERE status = 'pending'
    UNION ALL
    SELECT queue, coalesce(task, ''), run_at, false
    FROM tasks WHERE status = 'in_progress'
)
SELECT queue, nullif(name, ''),
       count(*) FILTER (WHERE pending AND run_at <= now()),
       count(*) FILTER (WHERE pending AND run_at > now()),
       count(*) FILTER (WHERE NOT pending),
       extract(epoch FROM now() - min(run_at) FILTER (WHERE pending AND run_at <= now()))
FROM live
GROUP BY queue, name
ORDER BY queue, name;
