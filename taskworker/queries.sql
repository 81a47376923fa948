-- Every statement taskworker sends, by name. Each block starts with
-- "-- name: <name>" and a line saying what it is for. Loaded once by sql.py.

-- name: table_exists
-- Does the tasks table exist? (serve refuses to start without it)
SELECT to_regclass('tasks') IS NOT NULL;

-- name: claim
-- Take up to %(limit)s due pending tasks, oldest first, for this process, in one
-- statement. SKIP LOCKED: two claimers never wait on, nor take, the same row.
WITH picked AS (
    SELECT id FROM tasks
    WHERE status = 'pending' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET status = 'in_progress',
    locked_by = %(holder)s,
    locked_until = now() + %(lease)s * interval '1 second',
    attempts = t.attempts + 1,
    updated_at = now()
FROM picked
WHERE t.id = picked.id
RETURNING t.id, t.payload, t.attempts, t.rescues;

-- name: rescue
-- Tasks whose lease ran out belong to a process that stopped responding: put them
-- back to pending, or park them in error once their worker was lost too often.
WITH lost AS (
    SELECT id FROM tasks
    WHERE status = 'in_progress' AND locked_until < now()
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
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM lost
WHERE t.id = lost.id
RETURNING t.id, t.status;

-- name: next_due
-- Seconds until the next retry is due and until the next lease expires (NULL: none).
SELECT extract(epoch FROM
           (SELECT min(run_at) FROM tasks WHERE status = 'pending' AND run_at > now()) - now()),
       extract(epoch FROM
           (SELECT min(locked_until) FROM tasks WHERE status = 'in_progress') - now());

-- name: heartbeat
-- Extend the lease of every task this process holds; the ids not returned were lost.
UPDATE tasks
SET locked_until = now() + %(lease)s * interval '1 second'
WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(holder)s AND status = 'in_progress'
RETURNING id;

-- name: complete
-- Write many outcomes at once. Fenced: a row is written only while this process
-- still holds that attempt. status 'pending' with uncount 1 gives a task back
-- without counting the attempt; with a delay it schedules a retry.
UPDATE tasks AS t
SET status = v.status,
    result = v.result,
    error = coalesce(v.error, t.error),
    attempts = t.attempts - v.uncount,
    run_at = CASE WHEN v.delay IS NULL THEN t.run_at
                  ELSE now() + v.delay * interval '1 second' END,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
            %(results)s::text[], %(errors)s::text[], %(delays)s::float8[],
            %(uncounts)s::int[])
     AS v(id, attempt, status, result, error, delay, uncount)
WHERE t.id = v.id
  AND t.attempts = v.attempt
  AND t.locked_by = %(holder)s
  AND t.status = 'in_progress'
RETURNING t.id;

-- name: release_orphans
-- After a reconnect: give back tasks this process holds in the database but does
-- not know of (a claim whose reply was lost with the connection).
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
LISTEN taskworker_tasks;

-- name: seed
-- Insert %(count)s sample tasks "Test task 1" ... "Test task N".
INSERT INTO tasks (payload)
SELECT 'Test task ' || n FROM generate_series(1, %(count)s) AS n;

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
-- One migrator at a time, across processes and hosts.
SELECT pg_advisory_lock(7261835001);

-- name: migrations_unlock
SELECT pg_advisory_unlock(7261835001);

-- name: migrations_applied
SELECT version FROM schema_migrations;

-- name: migration_record
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);
