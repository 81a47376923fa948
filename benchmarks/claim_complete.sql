-- pgbench script: the raw SQL of one worker round with batches of :batch tasks
-- (pgbench -D batch=100). Claim :batch due pending tasks with SKIP LOCKED (as taskworker's claim: lease,
-- attempt count), then, in a second transaction, mark them done fenced on the
-- holder. Run with -M prepared; :ids is the claimed ids as an array literal.
WITH picked AS (
    SELECT id FROM tasks
    WHERE status = 'pending' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE tasks AS t
    SET status = 'in_progress', locked_by = 'pgbench', attempts = t.attempts + 1,
        locked_until = now() + interval '30 seconds', updated_at = now()
    FROM picked
    WHERE t.id = picked.id
    RETURNING t.id, t.payload
)
SELECT '{' || coalesce(string_agg(id::text, ','), '') || '}' AS ids FROM claimed
\gset
UPDATE tasks
SET status = 'done', result = payload, locked_by = NULL, locked_until = NULL,
    updated_at = now()
WHERE id = ANY(:ids::bigint[]) AND locked_by = 'pgbench' AND status = 'in_progress';
