-- Every statement taskworker sends, by name. Each block starts with
-- "-- name: <name>" and a line saying what it is for. Loaded once by sql.py, and
-- sent only through the typed functions of tasks.py and migrations.py.

-- name: table_exists
-- Does the tasks table exist? (serve refuses to start without it)
SELECT to_regclass('tasks') IS NOT NULL;

-- name: claimed_row
-- What every claim writes to the rows it takes (claim, claim_shares and
-- claim_alone include it as /* include claimed_row */): in progress, held by %(holder)s for
-- %(lease)s seconds, one more attempt, and a new fencing token (fence: raised by
-- every claim and by nothing else, so no two holds of a task share it; every
-- later write of this hold names it). A part of those statements, never sent alone.
status = 'in_progress',
    run_alone = false,
    locked_by = %(holder)s,
    locked_until = now() + %(lease)s * interval '1 second',
    attempts = t.attempts + 1,
    fence = t.fence + 1,
    started_at = NULL,
    updated_at = now()

-- name: claimed_columns
-- What every claim returns of the rows it takes (claim, claim_shares and
-- claim_keyed include it as /* include claimed_columns */), each row's share
-- read from the relation the UPDATE joins (its queue's share of the claim).
-- A part of those statements, never sent alone.
t.id,
    CASE WHEN coalesce(octet_length(t.payload), pg_column_size(t.arguments))
              <= %(inline_bytes)s
         THEN coalesce(t.payload, t.arguments::text) END AS payload,
    t.attempts, t.rescues,
    coalesce(octet_length(t.payload), pg_column_size(t.arguments), 0) AS size,
    t.task, t.queue, share, t.cancel_requested_at IS NOT NULL AS cancel,
    t.fence, t.unstarted_rescues, t.format, t.trace_context::text AS trace,
    t.priority, t.run_at

-- name: claim
-- Take up to %(limit)s due pending tasks for this process, in one round trip.
--
-- What it serves: the queues %(queues)s (NULL: every queue) that are not paused,
-- and the task names %(names)s it knows ('' stands for a task without a name,
-- served by a process with a default handler). A capped queue (QUEUES=images:5)
-- has %(rooms)s more places in this process (%(capped)s names them).
--
-- pairs: the (queue, name) pairs that have pending tasks. With %(discover)s
-- they are found by skipping through tasks_name_claim_idx (one index descent per
-- pair, however many rows) and returned as extra rows (id NULL; name, queue) for
-- the fetcher to keep; without, the fetcher sends the pairs it keeps
-- (%(pair_queues)s, %(pair_names)s): the descents walk the index entries of
-- claimed rows until VACUUM removes them, too dear for every claim of a busy
-- process (the fetcher rediscovers after an idle spell and every half second;
-- in between, when every queue holds only names it knows, it sends claim_shares).
--
-- Each served queue with work gets an equal share of the claim (what does not
-- divide evenly goes one each to queues drawn at random), so a queue is never
-- starved by a busier one or one with higher priorities: priorities order tasks
-- within a queue (higher first, then due time, then id), not across queues. A
-- queue whose pending names this process all knows is read in
-- one ordered scan of tasks_queue_claim_idx; a queue that also holds names it
-- does not know (a rolling deploy added them) is read name by name, so those rows
-- are never walked over. SKIP LOCKED: two claimers never wait on, nor take, the
-- same row. Tasks that must run alone are claimed by claim_alone.
--
-- Concurrency limits: a name in %(limited)s (max_running) is claimed only with a
-- free slot row of taskworker_slots, taken in the same statement and leased like
-- the task (a slot whose lease ran out is free: its holder died); a queue holding
-- a limited name is read name by name. Each queue's picks are then cut to its
-- share in priority order (picks by name can exceed it).
--
-- Rate limits (migration 017): a name in %(rated)s is claimed only with a token
-- of taskworker_rate_tokens whose free_at has passed, taken in the same
-- statement (its free_at moved %(spans)s seconds on: the window and the start
-- guard), and at most %(rated_room)s of them (the idle workers: a rate-limited
-- task must start at once, see catalog.py); its queue is read name by name too.
--
-- Planner settings: the plan must take the ordered indexes however stale the
-- statistics (a table just bulk-loaded and never analyzed would otherwise be
-- read whole and sorted): sent with SET LOCAL in the same round trip.
--
-- Row formats (migration 012): only formats 1 and 2 are claimed; a row of a
-- later format waits for a process that knows it.
--
-- Returns id, payload (a format 2 row's: its JSON call; NULL when over
-- %(inline_bytes)s bytes: octet_length and pg_column_size read a stored value's
-- size without loading it), attempts, rescues, payload size, task name, queue,
-- the queue's share, cancel_requested_at IS NOT NULL, fence, unstarted_rescues
-- format and trace (the enqueue's trace context as JSON text, migration 014;
-- NULL when it was not traced), in the order to run them (priority, due time,
-- id); then the pairs discovered.
WITH RECURSIVE found(queue, name) AS (
    (SELECT queue, coalesce(task, '') FROM tasks
     WHERE %(discover)s AND status = 'pending' AND format <= 2
     ORDER BY queue, coalesce(task, '') LIMIT 1)
  UNION ALL
    SELECT n.queue, n.name
    FROM found AS p
    CROSS JOIN LATERAL (
        SELECT queue, coalesce(task, '') AS name FROM tasks
        WHERE status = 'pending' AND format <= 2
          AND (queue, coalesce(task, '')) > (p.queue, p.name)
        ORDER BY queue, coalesce(task, '') LIMIT 1) AS n
),
pairs AS (
    SELECT queue, name FROM found
  UNION ALL
    SELECT queue, name FROM unnest(%(pair_queues)s::text[], %(pair_names)s::text[]) AS k(queue, name)
    WHERE NOT %(discover)s
),
served AS MATERIALIZED (
    SELECT p.queue, p.name, r.room
    FROM pairs AS p
    LEFT JOIN unnest(%(capped)s::text[], %(rooms)s::int[]) AS r(queue, room)
           ON r.queue = p.queue
    WHERE (%(queues)s::text[] IS NULL OR p.queue = ANY(%(queues)s::text[]))
      AND NOT EXISTS (SELECT 1 FROM taskworker_paused_queues AS z WHERE z.queue = p.queue)
      AND coalesce(r.room, 1) > 0
),
queues AS (
    SELECT queue,
           bool_and(name = ANY(%(names)s::text[])) AND NOT bool_or(name = ANY(%(limited)s::text[]))
               AND NOT bool_or(name = ANY(%(rated)s::text[])) AS whole,
           min(room) AS room
    FROM served
    GROUP BY queue
    HAVING bool_or(name = ANY(%(names)s::text[]))
),
shares AS MATERIALIZED (
    SELECT queue, whole,
           least(%(limit)s / n + (turn <= mod(%(limit)s, n))::int,
                 coalesce(room, %(limit)s)) AS share
    FROM (SELECT queue, whole, room, count(*) OVER () AS n,
                 row_number() OVER (ORDER BY random()) AS turn
          FROM queues) AS q
),
slots AS MATERIALIZED (
    SELECT task, slot FROM taskworker_slots
    WHERE task = ANY(%(limited)s::text[]) AND (locked_by IS NULL OR locked_until < now())
    FOR UPDATE SKIP LOCKED
),
tokens AS MATERIALIZED (
    SELECT task, token FROM taskworker_rate_tokens
    WHERE task = ANY(%(rated)s::text[]) AND free_at <= now()
    FOR UPDATE SKIP LOCKED
),
picked AS MATERIALIZED (
    SELECT c.id, s.queue, c.name, c.priority, c.run_at, s.share
    FROM shares AS s
    CROSS JOIN LATERAL (
        SELECT t.id, coalesce(t.task, '') AS name, t.priority, t.run_at FROM tasks AS t
        WHERE t.status = 'pending' AND t.queue = s.queue AND t.run_at <= now()
          AND NOT t.run_alone AND coalesce(t.task, '') = ANY(%(names)s::text[])
          AND t.format <= 2
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT s.share
        FOR UPDATE OF t SKIP LOCKED) AS c
    WHERE s.whole
  UNION ALL
    SELECT c.id, s.queue, p.name, c.priority, c.run_at, s.share
    FROM shares AS s
    JOIN served AS p ON p.queue = s.queue AND p.name = ANY(%(names)s::text[])
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at FROM tasks AS t
        WHERE t.status = 'pending' AND t.queue = s.queue AND coalesce(t.task, '') = p.name
          AND t.run_at <= now()
          AND (NOT t.run_alone OR p.name = ANY(%(limited)s::text[]) OR p.name = ANY(%(rated)s::text[]))
          AND t.format <= 2
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT least(s.share,
                    CASE WHEN p.name = ANY(%(limited)s::text[])
                         THEN (SELECT count(*) FROM slots WHERE slots.task = p.name) END,
                    CASE WHEN p.name = ANY(%(rated)s::text[])
                         THEN least(%(rated_room)s,
                                    (SELECT count(*) FROM tokens WHERE tokens.task = p.name)) END)
        FOR UPDATE OF t SKIP LOCKED) AS c
    WHERE NOT s.whole
),
chosen AS MATERIALIZED (
    SELECT id, queue, name, share FROM (
        SELECT id, queue, name, share, priority, run_at,
               row_number() OVER (PARTITION BY queue ORDER BY priority DESC, run_at, id) AS turn
        FROM picked) AS ranked
    WHERE turn <= share
),
slotted AS (
    SELECT c.id, s.task, s.slot
    FROM (SELECT id, name, row_number() OVER (PARTITION BY name ORDER BY id) AS n
          FROM chosen WHERE name = ANY(%(limited)s::text[])) AS c
    JOIN (SELECT task, slot, row_number() OVER (PARTITION BY task ORDER BY slot) AS n
          FROM slots) AS s ON s.task = c.name AND s.n = c.n
),
took AS (
    UPDATE taskworker_slots AS z
    SET task_id = slotted.id, locked_by = %(holder)s,
        locked_until = now() + %(lease)s * interval '1 second'
    FROM slotted
    WHERE z.task = slotted.task AND z.slot = slotted.slot
    RETURNING z.task_id
),
/* include tokens_spent */,
claimed AS (
    UPDATE tasks AS t
    SET /* include claimed_row */
    FROM chosen
    WHERE t.id = chosen.id
      AND (chosen.name <> ALL(%(limited)s::text[]) OR chosen.id IN (SELECT task_id FROM took))
      AND (chosen.name <> ALL(%(rated)s::text[]) OR chosen.id IN (SELECT id FROM spent))
    RETURNING /* include claimed_columns */
)
(SELECT id, payload, attempts, rescues, size, task, queue, share, cancel, fence,
        unstarted_rescues, format, trace FROM claimed
 ORDER BY priority DESC, run_at, id)
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, name, queue, NULL, NULL, NULL, NULL, NULL, NULL
FROM found;

-- name: tokens_spent
-- The rate-limit tokens `chosen` rows take (claim and claim_keyed include it):
-- the n-th chosen row of a rated name takes the name's n-th free token (the
-- claim took no more rows than free tokens), whose free_at moves on by the
-- name's span in %(spans)s. `spent`: the ids of the rows that got one. Never
-- sent alone.
tokened AS (
    SELECT c.id, z.task, z.token
    FROM (SELECT id, name, row_number() OVER (PARTITION BY name ORDER BY id) AS n
          FROM chosen WHERE name = ANY(%(rated)s::text[])) AS c
    JOIN (SELECT task, token, row_number() OVER (PARTITION BY task ORDER BY token) AS n
          FROM tokens) AS z ON z.task = c.name AND z.n = c.n
),
spent AS (
    UPDATE taskworker_rate_tokens AS z
    SET free_at = now() + w.span * interval '1 second'
    FROM tokened
    JOIN unnest(%(rated)s::text[], %(spans)s::float8[]) AS w(task, span) ON w.task = tokened.task
    WHERE z.task = tokened.task AND z.token = tokened.token
    RETURNING tokened.id
)

-- name: claim_keyed
-- Take up to %(limit)s due tasks enqueued with a concurrency key (format 3,
-- migration 017) for this process, at most %(per_key)s of each (task, key)
-- running at once across every process (NULL: no limit per key), in one round
-- trip. The ordinary claims read format <= 2 only: a keyed task is taken here.
--
-- walk: the (task, key) pairs with pending tasks, after (%(after_task)s,
-- %(after_key)s) (where the last claim's walk stopped, so every key gets its
-- turn), one descent of tasks_key_claim_idx per key, at most %(scan)s keys: a
-- key's backlog is never read through to reach the next key, so a saturated key
-- costs the others one descent. Names this process does not know are walked
-- past, not taken.
--
-- keys: each key's room (its limit less its tasks in progress with a live lease:
-- a holder killed -9 frees its place when its lease runs out) and its row in
-- taskworker_keys, made here when missing (that key waits for the next claim).
-- locked: each key with room whose row is unchanged since this statement's
-- snapshot, locked (SKIP LOCKED: a key another claim is taking is left to it).
-- Every claim of a key raises its `claims` in the same statement, so a claim
-- whose snapshot missed another's claim of the key finds `claims` changed (the
-- lock rechecks the row as committed) and leaves the key: the room it read is
-- never stale. (An outcome written since only makes the room read smaller.)
--
-- picked: each locked key's first tasks (priority, due time, id) up to its room,
-- in served queues that are not paused; chosen: the first %(limit)s of all of
-- them, rate limits applied as in claim (%(rated)s, %(spans)s, %(rated_room)s).
-- Returns the claim's columns (share: %(limit)s), then, when the walk stopped at
-- %(scan)s keys or key rows were made, one row (id NULL): the last key walked
-- (task, and the key in the queue column; NULL when the walk went to the end),
-- for the next claim to start after, and in the share column how many key rows
-- were made (their keys' tasks are for the next claim).
WITH RECURSIVE walk(task, key) AS (
    (SELECT task, concurrency_key FROM tasks
     WHERE status = 'pending' AND concurrency_key IS NOT NULL
       AND (task, concurrency_key) > (%(after_task)s::text, %(after_key)s::text)
     ORDER BY task, concurrency_key LIMIT 1)
  UNION ALL
    SELECT n.task, n.key
    FROM walk AS w
    CROSS JOIN LATERAL (
        SELECT task, concurrency_key AS key FROM tasks
        WHERE status = 'pending' AND concurrency_key IS NOT NULL
          AND (task, concurrency_key) > (w.task, w.key)
        ORDER BY task, concurrency_key LIMIT 1) AS n
),
walked AS MATERIALIZED (
    SELECT task, key FROM walk LIMIT %(scan)s
),
keys AS MATERIALIZED (
    SELECT w.task, w.key, z.claims, z.task IS NOT NULL AS present,
           coalesce(m.per_key, 2147483647) - (
               SELECT count(*) FROM tasks AS r
               WHERE r.status = 'in_progress' AND r.task = w.task AND r.concurrency_key = w.key
                 AND r.locked_until > now())::int AS room
    FROM walked AS w
    JOIN unnest(%(names)s::text[], %(per_key)s::int[]) AS m(task, per_key) ON m.task = w.task
    LEFT JOIN taskworker_keys AS z ON z.task = w.task AND z.key = w.key
),
made AS (
    INSERT INTO taskworker_keys (task, key)
    SELECT task, key FROM keys WHERE NOT present ORDER BY task, key
    ON CONFLICT DO NOTHING
    RETURNING 1
),
locked AS MATERIALIZED (
    SELECT z.task, z.key, k.room
    FROM keys AS k
    JOIN taskworker_keys AS z ON z.task = k.task AND z.key = k.key AND z.claims = k.claims
    WHERE k.present AND k.room > 0
    FOR UPDATE OF z SKIP LOCKED
),
tokens AS MATERIALIZED (
    SELECT task, token FROM taskworker_rate_tokens
    WHERE task = ANY(%(rated)s::text[]) AND free_at <= now()
    FOR UPDATE SKIP LOCKED
),
picked AS MATERIALIZED (
    SELECT c.id, l.task AS name, l.key, c.priority, c.run_at
    FROM locked AS l
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.run_at FROM tasks AS t
        WHERE t.status = 'pending' AND t.task = l.task AND t.concurrency_key = l.key
          AND t.run_at <= now() AND t.format <= 3
          AND (%(queues)s::text[] IS NULL OR t.queue = ANY(%(queues)s::text[]))
          AND NOT EXISTS (SELECT 1 FROM taskworker_paused_queues AS z WHERE z.queue = t.queue)
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT least(l.room, %(limit)s)
        FOR UPDATE OF t SKIP LOCKED) AS c
),
chosen AS MATERIALIZED (
    SELECT id, name, key, %(limit)s AS share FROM (
        SELECT p.*, row_number() OVER (ORDER BY priority DESC, run_at, id) AS turn,
               row_number() OVER (PARTITION BY name ORDER BY priority DESC, run_at, id) AS nth
        FROM picked AS p) AS r
    WHERE turn <= %(limit)s
      AND (name <> ALL(%(rated)s::text[])
           OR nth <= least(%(rated_room)s, (SELECT count(*) FROM tokens WHERE tokens.task = r.name)))
),
raised AS (
    UPDATE taskworker_keys AS z
    SET claims = z.claims + 1
    FROM (SELECT DISTINCT name, key FROM chosen) AS c
    WHERE z.task = c.name AND z.key = c.key
),
/* include tokens_spent */,
claimed AS (
    UPDATE tasks AS t
    SET /* include claimed_row */
    FROM chosen
    WHERE t.id = chosen.id
      AND (chosen.name <> ALL(%(rated)s::text[]) OR chosen.id IN (SELECT id FROM spent))
    RETURNING /* include claimed_columns */
)
(SELECT id, payload, attempts, rescues, size, task, queue, share, cancel, fence,
        unstarted_rescues, format, trace FROM claimed
 ORDER BY priority DESC, run_at, id)
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, last.task, last.key, (SELECT count(*) FROM made)::int,
       NULL, NULL, NULL, NULL, NULL
FROM (SELECT 1) AS one
LEFT JOIN (SELECT task, key FROM walked ORDER BY task DESC, key DESC LIMIT 1) AS last
       ON (SELECT count(*) FROM walked) = %(scan)s
WHERE last.task IS NOT NULL OR EXISTS (SELECT 1 FROM made);

-- name: claim_shares
-- The claim of a busy process whose kept pairs show every queue it serves holding
-- only names it knows, with no concurrency limit among them: `claim` without
-- its discovery and sharing, which the fetcher has done (%(queues)s with their
-- %(shares)s). The same ordered scan per queue, the same columns; a queue paused
-- since is skipped. (Half a millisecond less per claim than the whole `claim`,
-- which a busy process sends hundreds of times a second.) Returns the claim's
-- columns, then each row's priority and due time (the fetcher's next bound).
WITH /* include shares_claimed */
SELECT id, payload, attempts, rescues, size, task, queue, share, cancel, fence,
       unstarted_rescues, format, trace, priority, run_at::text FROM claimed
ORDER BY priority DESC, run_at, id;

-- name: shares_claimed
-- The parts of claim_shares that pick and take the rows (claim_shares and
-- claim_shares_completing include them). Never sent alone.
--
-- Bounds: a queue may come with where this process's last claim from it began
-- (%(from_priorities)s, %(from_run_ats)s, %(from_ids)s: its first row's
-- priority, due time and id; NULL: none). The scan then starts there instead of
-- at the start of the queue's index range: at its own priority from that row on
-- (a range of the index), after every higher priority (new tasks of a higher
-- priority are still taken first) and before every lower one. The entries
-- before the bound belong to tasks claimed since, which vacuum may not have
-- removed yet, and every one of them is a heap visit while a long transaction
-- holds vacuum back: an unbounded claim read them all, each time (part 19: the
-- claim fell from 5,000 to 300 tasks/s). Tasks that become claimable before a
-- bound (given back, rescued, or enqueued with an earlier due time) are taken by
-- the unbounded `claim`, which a busy process sends every PAIRS_TTL or more (see
-- fetcher.py). The four parts are read in order and only as far as the share
-- (UNION ALL under a LIMIT), so no row is locked that is not taken (each part is
-- a subquery: a part of a UNION may not lock rows itself).
picked AS MATERIALIZED (
    SELECT c.id, s.share
    FROM unnest(%(queues)s::text[], %(shares)s::int[], %(from_priorities)s::int[],
                %(from_run_ats)s::timestamptz[], %(from_ids)s::bigint[])
         AS s(queue, share, priority, run_at, id)
    CROSS JOIN LATERAL (
        SELECT u.id FROM (
            SELECT a1.id FROM (SELECT t.id FROM tasks AS t
                               WHERE s.priority IS NULL AND /* include busy_take */) AS a1
          UNION ALL
            SELECT a2.id FROM (SELECT t.id FROM tasks AS t
                               WHERE t.priority > s.priority AND /* include busy_take */) AS a2
          UNION ALL
            SELECT a3.id FROM (SELECT t.id FROM tasks AS t
                               WHERE t.priority = s.priority
                                 AND (t.run_at, t.id) >= (s.run_at, s.id)
                                 AND /* include busy_take */) AS a3
          UNION ALL
            SELECT a4.id FROM (SELECT t.id FROM tasks AS t
                               WHERE t.priority < s.priority AND /* include busy_take */) AS a4
        ) AS u
        LIMIT s.share) AS c
    WHERE NOT EXISTS (SELECT 1 FROM taskworker_paused_queues AS z WHERE z.queue = s.queue)
),
claimed AS (
    UPDATE tasks AS t
    SET /* include claimed_row */
    FROM picked
    WHERE t.id = picked.id
    RETURNING /* include claimed_columns */
)

-- name: busy_take
-- What each part of shares_claimed takes of queue s.queue (after its own bound
-- condition): due pending tasks this process knows, in the claim's order, at
-- most the queue's share, skipping the rows another claimer holds. Never sent
-- alone.
t.status = 'pending' AND t.queue = s.queue AND t.run_at <= now()
  AND NOT t.run_alone AND coalesce(t.task, '') = ANY(%(names)s::text[])
  AND t.format <= 2
ORDER BY t.priority DESC, t.run_at, t.id
LIMIT s.share
FOR UPDATE OF t SKIP LOCKED

-- name: claim_shares_completing
-- One round trip per batch for a busy process: `complete` (the outcomes of the
-- tasks it last ran, fenced the same way) and claim_shares, in one statement and
-- one transaction. Both parts see the same snapshot: the rows being completed are
-- in progress there, so the claim never takes one of them (a task given back
-- here is claimable from the next claim on). Returns outcome_states' row for
-- each outcome given (id, fence, and in the last column whether the outcome is in
-- the table), then claim_shares' rows (NULL in the last column).
-- The outcomes are written first, before any task is locked for the claim (the
-- parts of a UNION ALL run in order, each CTE when first read): this statement
-- can wait only while writing, and then holds no lock but on its own rows. A
-- transaction elsewhere may hold the lock of one of those rows (a claim keeps the
-- lock of a row it found claimed meanwhile and passed over; a cancel or a user's
-- UPDATE takes it) and go on to lock pending tasks: had this statement locked one
-- of them first, each would wait for the other. (Part 19's soak saw a deadlock
-- between a claim and this statement once in 30 minutes; this order removes the
-- cycles in which this statement's claim locks take part.)
WITH /* include outcomes_given */,
/* include outcomes_written */,
/* include shares_claimed */
SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, fence, NULL, NULL, NULL, NULL,
       NULL, written
FROM (/* include outcome_states */) AS states
UNION ALL
(SELECT id, payload, attempts, rescues, size, task, queue, share, cancel, fence,
        unstarted_rescues, format, trace, priority, run_at::text, NULL::text AS written
 FROM claimed
 ORDER BY priority DESC, run_at, id);

-- name: ordered_plans
-- Sent in front of a claim, in its transaction: only ordered index scans, so the
-- plan does not depend on statistics (see claim). A plan priced with disabled
-- nodes costs billions, past jit_above_cost: JIT compiling it would take seconds.
SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off;
SET LOCAL jit = off;

-- name: claim_alone
-- One due task that must run alone (its worker was lost MAX_RESCUES times), for
-- a process that holds no other, so that if the process dies running it no other
-- task is charged with the loss; the flag is cleared, and if the process dies
-- again the rescue parks the task. Served queues and known names only (a name
-- with a concurrency limit is not run alone: the ordinary claim takes it under
-- its limit; nor one with a rate limit). Returns the claim's columns.
WITH picked AS (
    SELECT id FROM tasks
    WHERE status = 'pending' AND run_at <= now() AND run_alone AND format <= 2
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND coalesce(task, '') = ANY(%(names)s::text[])
      AND coalesce(task, '') <> ALL(%(limited)s::text[])
      AND coalesce(task, '') <> ALL(%(rated)s::text[])
      AND queue NOT IN (SELECT queue FROM taskworker_paused_queues)
    ORDER BY priority DESC, run_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET /* include claimed_row */
FROM picked
WHERE t.id = picked.id
RETURNING t.id,
          CASE WHEN coalesce(octet_length(t.payload), pg_column_size(t.arguments))
                    <= %(inline_bytes)s
               THEN coalesce(t.payload, t.arguments::text) END,
          t.attempts, t.rescues,
          coalesce(octet_length(t.payload), pg_column_size(t.arguments), 0),
          t.task, t.queue, 1, t.cancel_requested_at IS NOT NULL, t.fence,
          t.unstarted_rescues, t.format, t.trace_context::text;

-- name: ensure_slots
-- One slot row per allowed run of each limited task name (%(tasks)s, with
-- max_running %(counts)s); free slots above a lowered limit are deleted (one in
-- use goes when it is free, at the next start).
WITH wanted AS (
    SELECT t.task, s.slot
    FROM unnest(%(tasks)s::text[], %(counts)s::int[]) AS t(task, n)
    CROSS JOIN LATERAL generate_series(1, t.n) AS s(slot)
),
added AS (
    INSERT INTO taskworker_slots (task, slot)
    SELECT task, slot FROM wanted
    ON CONFLICT DO NOTHING
)
DELETE FROM taskworker_slots AS z
USING unnest(%(tasks)s::text[], %(counts)s::int[]) AS t(task, n)
WHERE z.task = t.task AND z.slot > t.n AND (z.locked_by IS NULL OR z.locked_until < now());

-- name: ensure_tokens
-- The rate-limit tokens of each rated task name (%(tasks)s): %(counts)s rows,
-- each for a window of %(pers)s seconds; tokens above a lowered count are
-- deleted.
WITH wanted AS (
    SELECT t.task, s.token, t.per
    FROM unnest(%(tasks)s::text[], %(counts)s::int[], %(pers)s::float8[]) AS t(task, n, per)
    CROSS JOIN LATERAL generate_series(1, t.n) AS s(token)
),
added AS (
    INSERT INTO taskworker_rate_tokens (task, token, per)
    SELECT task, token, per FROM wanted
    ON CONFLICT (task, token) DO UPDATE SET per = excluded.per
    WHERE taskworker_rate_tokens.per <> excluded.per
)
DELETE FROM taskworker_rate_tokens AS z
USING unnest(%(tasks)s::text[], %(counts)s::int[]) AS t(task, n)
WHERE z.task = t.task AND z.token > t.n;

-- name: payloads
-- The payloads of the holds (%(ids)s, %(fences)s) that %(holder)s still has: the
-- ones the claim left unloaded for their size, loaded within the fetcher's byte
-- budget. One primary-key probe per hold: the holder and status are compared
-- with the columns of `holds`, not with constants (see outcomes_written).
WITH holds AS MATERIALIZED (
    SELECT *, %(holder)s::text AS holder, 'in_progress'::text AS held
    FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[]) AS h(id, fence)
)
SELECT t.id, coalesce(t.payload, t.arguments::text)
FROM holds AS h
JOIN tasks AS t
  ON t.id = h.id AND t.fence = h.fence AND t.locked_by = h.holder AND t.status = h.held;

-- name: rescue
-- Tasks whose lease ran out belong to a process that stopped responding: put them
-- back to pending, or park them in error once their worker was lost too often.
-- Never a task the rescuer itself still holds (%(holder)s, %(held)s): a live
-- process gives back what it can no longer keep, without charging a rescue.
-- Only a task whose run started (started_at) is charged the rescue; one lost
-- before it started goes back uncharged, its attempt not counted (see migration
-- 011). A task back to pending for its last chance (lost MAX_RESCUES times)
-- will run alone. A task `taskworker cancel` asked to stop ends cancelled
-- instead of going back. Returns each task's id, its new status, and whether it
-- was charged.
WITH lost AS (
    SELECT id, (started_at IS NOT NULL)::int AS charge FROM tasks
    WHERE status = 'in_progress' AND locked_until < now()
      AND NOT (locked_by = %(holder)s AND id = ANY(%(held)s::bigint[]))
    ORDER BY locked_until
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t
SET rescues = t.rescues + c.charge,
    unstarted_rescues = t.unstarted_rescues + 1 - c.charge,
    attempts = t.attempts - 1 + c.charge,
    status = CASE WHEN t.cancel_requested_at IS NOT NULL THEN 'cancelled'
                  WHEN t.rescues + c.charge > %(max_rescues)s THEN 'error' ELSE 'pending' END,
    error = CASE WHEN t.cancel_requested_at IS NOT NULL
                 THEN 'cancelled: by ' || coalesce(t.cancel_requested_by, 'taskworker cancel')
                      || '; its worker was lost'
                 WHEN t.rescues + c.charge > %(max_rescues)s
                 THEN 'abandoned: worker lost ' || (t.rescues + c.charge) || ' times'
                 ELSE t.error END,
    run_alone = t.rescues + c.charge = %(max_rescues)s AND t.cancel_requested_at IS NULL,
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM lost AS c
WHERE t.id = c.id
RETURNING t.id, t.status, c.charge = 1;

-- name: alone_waiting
-- Is a task that must run alone due, that this process would claim (see
-- claim_alone; a row of a later format is not one)? (The process then drains
-- and claims it.)
SELECT EXISTS (SELECT 1 FROM tasks
               WHERE run_alone AND status = 'pending' AND run_at <= now() AND format <= 2
                 AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
                 AND coalesce(task, '') = ANY(%(names)s::text[])
                 AND coalesce(task, '') <> ALL(%(limited)s::text[])
                 AND coalesce(task, '') <> ALL(%(rated)s::text[]));

-- name: next_due
-- Seconds until the next retry is due, until the next lease expires, and until
-- the next rate-limit token of the names %(rated)s is free (NULL: none), and
-- whether the notification queue is too full for the insert trigger to notify
-- (migration 018: the fetcher then polls).
SELECT extract(epoch FROM
           (SELECT min(run_at) FROM tasks WHERE status = 'pending' AND run_at > now()) - now()),
       extract(epoch FROM
           (SELECT min(locked_until) FROM tasks WHERE status = 'in_progress') - now()),
       extract(epoch FROM
           (SELECT min(free_at) FROM taskworker_rate_tokens
            WHERE task = ANY(%(rated)s::text[]) AND free_at > now()) - now()),
       (/* include notify_queue_full */);

-- name: heartbeat
-- Extend the lease of every hold (%(ids)s, %(fences)s) this process still has
-- (and of the concurrency slots those tasks hold), and return the ones it still
-- has, each with whether `taskworker cancel` asked to stop it; the ids not
-- returned were taken away (rescued). %(agos)s: seconds since each one's handler
-- started (NULL: not started), written as started_at where it is not yet (the
-- start of a task still running: see migration 011; a task that ended has its
-- start written by its outcome). SKIP LOCKED: a row locked right now is
-- being written by our completer (or rescued), so waiting for it could deadlock;
-- `mine` reads the statement's snapshot, so a skipped row that is still ours is
-- not mistaken for a lost one.
WITH holds AS MATERIALIZED (
    SELECT *, %(holder)s::text AS holder, 'in_progress'::text AS held
    FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[], %(agos)s::float8[])
         AS h(id, fence, ago)
),
mine AS MATERIALIZED (
    -- Each hold looked up by its id (LATERAL: one primary-key probe per hold). A
    -- plain join let the planner, told by statistics taken while nothing was in
    -- progress that one row is, scan every row in progress once per hold; so
    -- did the lateral probe while it compared the holder and the status with
    -- constants (tasks_in_progress_idx, priced as one row, then beat the primary
    -- key): they are compared with the columns of `holds` (see outcomes_written).
    SELECT t.id, t.fence, h.ago, t.cancel
    FROM holds AS h
    CROSS JOIN LATERAL (
        SELECT t.id, t.fence, t.cancel_requested_at IS NOT NULL AS cancel FROM tasks AS t
        WHERE t.id = h.id AND t.fence = h.fence AND t.locked_by = h.holder
          AND t.status = h.held) AS t
),
locked AS MATERIALIZED (
    -- Taken once, as a CTE of its own, one primary-key probe per hold: written as
    -- `u.id IN (SELECT ... FOR UPDATE SKIP LOCKED)` in the UPDATE, the locking
    -- subquery ran once per row, and with `status = 'in_progress'` here the
    -- planner probes through tasks_in_progress_idx, reading every row in
    -- progress per hold (quadratic: 6 s for 300 holds, minutes for 1,000). The
    -- holder and fence make it our hold (a row leaves progress only by a write
    -- that clears locked_by), so neither here nor in `extended` is the status
    -- named, which would send the planner through that index again.
    SELECT t.id, m.ago
    FROM mine AS m
    CROSS JOIN LATERAL (
        SELECT t.id FROM tasks AS t
        WHERE t.id = m.id AND t.fence = m.fence AND t.locked_by = %(holder)s
        FOR UPDATE OF t SKIP LOCKED) AS t
),
extended AS (
    UPDATE tasks AS u
    SET locked_until = now() + %(lease)s * interval '1 second',
        started_at = CASE WHEN u.started_at IS NULL AND l.ago IS NOT NULL
                          THEN now() - l.ago * interval '1 second' ELSE u.started_at END
    FROM locked AS l
    WHERE u.id = l.id
    RETURNING u.id
),
slots AS (
    UPDATE taskworker_slots
    SET locked_until = now() + %(lease)s * interval '1 second'
    WHERE locked_by = %(holder)s AND task_id IN (SELECT id FROM mine)
)
SELECT id, cancel FROM mine;

-- name: complete
-- Write many outcomes at once, and say of each one whether it is in the table.
-- Fenced: a row is written only while this process still has that hold (the
-- fence its claim set): a batch may hold an earlier hold's outcome beside a
-- later one's of the same task, and only the one that matched is written.
-- status 'pending' with given_back gives a task back untouched (the attempt is
-- not counted; the fence stays: the next claim raises it); with a delay it
-- schedules a retry (or a snooze). A process that runs a task with a
-- concurrency limit sends it as complete_freeing_slots.
WITH /* include outcomes_given */,
/* include outcomes_written */
/* include outcome_states */;

-- name: outcomes_given
-- The outcomes of complete and the statements that include it: one row per
-- outcome, with the workers lost with the task (rescues and unstarted_rescues)
-- its hold saw (see outcome_states), and the holder and status a held row has
-- (see outcomes_written). Never sent alone.
given AS MATERIALIZED (
    SELECT *, %(holder)s::text AS holder, 'in_progress'::text AS held
    FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[], %(statuses)s::text[],
                %(results)s::text[], %(errors)s::text[], %(delays)s::float8[],
                %(given_back)s::bool[], %(losses)s::int[], %(tracebacks)s::text[])
         AS v(id, fence, status, result, error, delay, given_back, losses, traceback)
)

-- name: outcomes_written
-- The fenced write of the outcomes given. Never sent alone. A result is the
-- text result of a format 1 row, the JSON return value of a format 2 row; a
-- traceback goes with the error it explains (an outcome without an error keeps
-- the last failure's pair).
-- Each outcome's row is found by its id, one primary-key probe per outcome: the
-- holder and status are compared with given's columns, not with constants, so
-- the planner cannot read the rows in progress through tasks_in_progress_idx
-- instead. That index, which statistics taken while few tasks were in progress
-- (or none: a table never analyzed) make look like one row, was the outer side of
-- a nested loop that compared every outcome with every row in progress: 0.1 to
-- 1.3 s per statement under a steady feed, quadratic in the batch.
written AS (
    UPDATE tasks AS t
    SET status = v.status,
        result = CASE WHEN t.format = 1 THEN v.result END,
        return_value = CASE WHEN t.format > 1 THEN v.result::jsonb END,
        error = CASE WHEN v.status = 'cancelled' AND v.error IS NULL  -- (a cancel asked)
                     THEN 'cancelled: by ' || coalesce(t.cancel_requested_by, 'taskworker cancel')
                     ELSE coalesce(v.error, t.error) END,
        traceback = CASE WHEN v.error IS NULL THEN t.traceback ELSE v.traceback END,
        attempts = t.attempts - CASE WHEN v.given_back THEN 1 ELSE 0 END,
        run_at = CASE WHEN v.delay IS NULL THEN t.run_at
                      ELSE now() + v.delay * interval '1 second' END,
        locked_by = NULL,
        locked_until = NULL,
        started_at = CASE WHEN v.given_back THEN t.started_at
                          ELSE coalesce(t.started_at, now()) END,
        updated_at = now()
    FROM given AS v
    WHERE t.id = v.id
      AND t.fence = v.fence
      AND t.locked_by = v.holder
      AND t.status = v.held
    RETURNING v.id, v.fence
)

-- name: outcome_states
-- For every outcome given, the truth about it: id, fence, and whether it is in
-- the table: 'now' (written by this statement), 'before' (the row shows it
-- written by this very hold: no holder, the status it writes, its fence, and no
-- rescue since; a later claim raises the fence, a rescue counts one), or
-- 'fenced' (fenced off: the task was taken over). So a statement sent again after its
-- reply was lost with the connection tells from its own answer which outcomes
-- the first send wrote. (The row is read only for an outcome not written now.)
SELECT v.id, v.fence,
       CASE WHEN w.id IS NOT NULL THEN 'now'
            WHEN EXISTS (SELECT 1 FROM tasks AS t
                         WHERE t.id = v.id AND t.fence = v.fence AND t.locked_by IS NULL
                           AND t.status = v.status
                           AND t.rescues + t.unstarted_rescues = v.losses)
            THEN 'before' ELSE 'fenced' END AS written
FROM given AS v
LEFT JOIN written AS w ON w.id = v.id AND w.fence = v.fence

-- name: complete_freeing_slots
-- `complete`, also freeing the concurrency slots the written tasks held (only a
-- slot still leased to this holder for a task written now). Sent only by a
-- process that runs a limited task: no other holds a slot, and the second
-- UPDATE costs the busy path a fifth of a millisecond per batch.
WITH /* include outcomes_given */,
/* include outcomes_written */,
freed AS (
    UPDATE taskworker_slots
    SET task_id = NULL, locked_by = NULL, locked_until = NULL
    WHERE locked_by = %(holder)s AND task_id IN (SELECT id FROM written)
)
/* include outcome_states */;

-- name: outcome_landed
-- After a lost reply to the commit of a task's bound transaction (part 21): is
-- the outcome of the hold (%(id)s, %(fence)s) in the row? As outcome_states'
-- 'before': no holder, the status it writes, its fence, and no rescue since.
SELECT EXISTS (SELECT 1 FROM tasks
               WHERE id = %(id)s AND fence = %(fence)s AND locked_by IS NULL
                 AND status = %(status)s AND rescues + unstarted_rescues = %(losses)s);

-- name: give_back_orphans
-- Give back tasks this process holds in the database but does not know of (a
-- claim whose reply was lost with the connection): every hold of %(holder)s
-- other than the (%(ids)s, %(fences)s) it knows; after a reconnect, and at the
-- end of shutdown (with none known). The attempt is not counted; the fence stays
-- (the next claim raises it), so an outcome of the orphaned hold can never be
-- taken for a later hold's.
UPDATE tasks AS t
SET status = 'pending', attempts = t.attempts - 1,
    locked_by = NULL, locked_until = NULL, updated_at = now()
WHERE t.status = 'in_progress' AND t.locked_by = %(holder)s
  AND NOT EXISTS (SELECT 1 FROM unnest(%(ids)s::bigint[], %(fences)s::bigint[]) AS k(id, fence)
                  WHERE k.id = t.id AND k.fence = t.fence)
RETURNING t.id;

-- name: wake_others
-- Tell idle fetchers (of every process) that tasks became claimable.
SELECT pg_notify('taskworker_tasks', '');

-- name: listen
-- Receive the notifications of wake_others and of the insert trigger (migration
-- 003), and the cancel requests of running tasks (payload: the task's id).
LISTEN taskworker_tasks; LISTEN taskworker_cancel;

-- name: notify
-- The listener's check that its LISTEN works: a notification it should receive.
SELECT pg_notify('taskworker_tasks', %(payload)s);

-- name: backend_pid
-- Which server process runs this statement (a pooler in between changes it).
SELECT pg_backend_pid();

-- name: notify_queue_full
-- Has the notification queue reached taskworker.notify_queue_limit, past which the
-- insert trigger no longer notifies (migration 018)? (A listener that stopped
-- reading holds the queue back; a full queue would fail every notifying commit.)
SELECT pg_notification_queue_usage()
       >= coalesce(nullif(current_setting('taskworker.notify_queue_limit', true), ''),
                   '0.5')::float8;

-- name: horizon_holders
-- What holds this database's xmin horizon back now (vacuum removes no row that
-- one of them might still see, so the claim walks ever more dead index entries):
-- each session with a snapshot or a transaction id (the older of the two), each
-- replication slot with an xmin (a standby's hot_standby_feedback) and each
-- prepared transaction. Vacuums themselves are left out (a VACUUM's snapshot does
-- not hold the horizon). Returns who, user, application, state ('' where this
-- role may not see it) and the xid, one row each; serve's heartbeat follows
-- them from look to look (processor/horizon.py).
SELECT 'pid ' || a.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''),
       coalesce(a.state, ''),
       (CASE WHEN a.backend_xid IS NULL THEN a.backend_xmin
             WHEN a.backend_xmin IS NULL THEN a.backend_xid
             WHEN age(a.backend_xid) >= age(a.backend_xmin) THEN a.backend_xid
             ELSE a.backend_xmin END)::text
FROM pg_stat_activity AS a
WHERE a.pid <> pg_backend_pid()
  AND coalesce(a.backend_xmin, a.backend_xid) IS NOT NULL
  AND (a.datname = current_database() OR a.backend_type = 'walsender')
  AND a.backend_type IS DISTINCT FROM 'autovacuum worker'  -- (NULL: another role's)
  AND a.pid NOT IN (SELECT pid FROM pg_stat_progress_vacuum)
UNION ALL
SELECT 'replication slot ' || slot_name, '', '', '', xmin::text
FROM pg_replication_slots
WHERE xmin IS NOT NULL AND (database IS NULL OR database = current_database())
UNION ALL
SELECT 'prepared transaction ' || quote_literal(gid), owner::text, '', '', transaction::text
FROM pg_prepared_xacts
WHERE database = current_database();

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
-- One migrator at a time, across processes and hosts: tried, not waited for (a
-- session waiting for it would have an open transaction, which a CREATE INDEX
-- CONCURRENTLY of the lock's holder waits for in turn: a deadlock).
SELECT pg_try_advisory_lock(7261835001);

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

-- name: migration_lock_timeout
-- How long a transactional migration waits for a lock (an ALTER TABLE behind an
-- open transaction that enqueued) before it gives up and is tried again: while
-- it waits, every statement on the table queues behind it.
SELECT set_config('lock_timeout', %(ms)s, true);

-- name: migration_session
-- The migrate session's own defaults (a direct connection, never a pooler's):
-- no statement_timeout or lock_timeout a role or database may set cuts short an
-- index built CONCURRENTLY (its waits for older transactions are lock waits).
SET statement_timeout = 0; SET lock_timeout = 0;

-- name: invalid_indexes
-- Which of %(names)s are INVALID indexes: left by a CREATE INDEX CONCURRENTLY
-- that was interrupted or failed (IF NOT EXISTS would keep them as they are).
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE NOT i.indisvalid AND c.relname = ANY(%(names)s) AND pg_table_is_visible(c.oid);

-- name: drop_index_concurrently
-- Drop an invalid index without blocking the table (outside a transaction).
DROP INDEX CONCURRENTLY IF EXISTS {index};

-- name: cancel_backend
-- Stop the statement an interrupted migrate left running (an index build).
SELECT pg_cancel_backend(%(pid)s);

-- name: lock_holder
-- The oldest other transaction holding a lock on a table of this database: what
-- a migration that cannot get its lock is most likely waiting behind.
SELECT a.pid, coalesce(nullif(a.application_name, ''), 'no application_name'),
       coalesce(a.state, 'state unknown'),
       coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0),
       string_agg(DISTINCT c.relname, ', ')
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation
WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND c.relkind IN ('r', 'p')
  AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
GROUP BY a.pid, a.application_name, a.state, a.xact_start
ORDER BY a.xact_start NULLS LAST
LIMIT 1;

-- name: enqueue
-- Insert one pending task per element of %(payloads)s (text payloads, format 1)
-- or of %(arguments)s (JSON calls, format 2; the other array is NULL), in the
-- array's order (ids increase in that order); all due at %(run_at)s, or now() +
-- %(delay)s, or now(); all of task %(task)s (NULL: the default handler), in
-- queue %(queue)s, at %(priority)s; %(trace)s: the enqueue's trace context
-- (JSON text, NULL when not traced: migration 014); with %(concurrency_key)s
-- (calls only), format 3: a keyed call (migration 017). (Cast: a driver that binds
-- on the server, asyncpg, would take an untyped parameter in a select list for
-- text.) The ids come back as one array in increasing order, in one row: a
-- driver that builds an object per row (SQLAlchemy's Row) spent more on 5,000
-- rows of one id than the server spent inserting them.
WITH added AS (
    INSERT INTO tasks (payload, arguments, format, run_at, task, queue, priority,
                       trace_context, concurrency_key)
    SELECT p.payload, p.arguments::jsonb,
           CASE WHEN p.arguments IS NULL THEN 1 WHEN %(concurrency_key)s::text IS NULL THEN 2
                ELSE 3 END,
           coalesce(%(run_at)s::timestamptz,
                    now() + coalesce(%(delay)s::interval, interval '0')),
           %(task)s, %(queue)s, %(priority)s::integer, %(trace)s::jsonb,
           %(concurrency_key)s::text
    FROM unnest(%(payloads)s::text[], %(arguments)s::text[]) WITH ORDINALITY
         AS p(payload, arguments, n)
    ORDER BY p.n
    RETURNING id
)
SELECT array_agg(id ORDER BY id) FROM added;

-- name: enqueue_now
-- Insert one pending task due now, with no unique key, trace context or
-- concurrency key (what most `enqueue` calls are): the columns given and no
-- more, so the server parses and plans it in about 80% of enqueue_unique's time
-- (a one-task transaction is mostly that and its commit). %(arguments)s: a JSON
-- call (format 2), or NULL beside a text %(payload)s.
INSERT INTO tasks (payload, arguments, format, task, queue, priority)
VALUES (%(payload)s, %(arguments)s::jsonb, CASE WHEN %(arguments)s IS NULL THEN 1 ELSE 2 END,
        %(task)s, %(queue)s, %(priority)s)
RETURNING id;

-- name: enqueue_unique
-- Insert one pending task with unique key %(unique_key)s, unless a live (pending
-- or running) task holds that key: then nothing is inserted and no row is
-- returned. The partial unique index decides, race-free: a conflicting row
-- inserted by a transaction not yet committed makes this statement wait for it.
-- DO NOTHING locks no row: DO UPDATE ... RETURNING would lock the live task's
-- row until the caller's commit, stalling its completer and heartbeat.
-- %(arguments)s: a JSON call (format 2), or NULL beside a text %(payload)s;
-- %(trace)s and %(concurrency_key)s: as in enqueue. With %(unique_key)s NULL it
-- never conflicts: enqueue's one task, a VALUES cheaper to plan than unnest.
INSERT INTO tasks (payload, arguments, format, run_at, task, queue, priority, unique_key,
                   trace_context, concurrency_key)
VALUES (%(payload)s, %(arguments)s::jsonb,
        CASE WHEN %(arguments)s IS NULL THEN 1 WHEN %(concurrency_key)s::text IS NULL THEN 2
             ELSE 3 END,
        coalesce(%(run_at)s::timestamptz, now() + coalesce(%(delay)s::interval, interval '0')),
        %(task)s, %(queue)s, %(priority)s, %(unique_key)s, %(trace)s::jsonb,
        %(concurrency_key)s::text)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'in_progress')
DO NOTHING
RETURNING id;

-- name: unique_holder
-- The live task holding unique key %(unique_key)s (after enqueue_unique inserted
-- nothing): its id and status; no row when it finished in between.
SELECT id, status FROM tasks
WHERE unique_key = %(unique_key)s AND status IN ('pending', 'in_progress');

-- name: cutoff
-- The database's now(), and now() minus %(seconds)s (NULL when no age is given):
-- fixed once per command so that batches agree on "older than".
SELECT now(), now() - %(seconds)s * interval '1 second';

-- name: status_rate_limits
-- Each rate-limited task name (its tokens: migration 017): the limit (tokens per
-- window of `per` seconds), the tokens spent (starts in about the last window),
-- and its pending tasks that are due (waiting for the limit, or for a worker).
SELECT r.task, count(*)::int, max(r.per), count(*) FILTER (WHERE r.free_at > now())::int,
       (SELECT count(*) FROM tasks AS t
        WHERE t.status = 'pending' AND t.task = r.task AND t.run_at <= now())::int
FROM taskworker_rate_tokens AS r
GROUP BY r.task
ORDER BY r.task;

-- name: status_summary
-- One scan for the status overview: counts by status (waiting: a workflow's
-- steps waiting for others, migration 015), pending tasks scheduled for
-- later, tasks in progress whose handler has not started (claimed: started_at
-- NULL, waiting in their process's local queue), seconds the oldest due pending
-- task has waited (since its run_at), tasks with a rescue changed in the last
-- hour, and pending tasks after a failed or lost attempt (attempts > 0: waiting
-- for a retry).
SELECT count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'in_progress'),
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'error'),
       count(*) FILTER (WHERE status = 'cancelled'),
       count(*) FILTER (WHERE status = 'waiting'),
       count(*) FILTER (WHERE status = 'pending' AND run_at > now()),
       count(*) FILTER (WHERE status = 'in_progress' AND started_at IS NULL),
       extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'pending'
                                                      AND run_at <= now())),
       count(*) FILTER (WHERE rescues > 0 AND updated_at > now() - interval '1 hour'),
       count(*) FILTER (WHERE status = 'pending' AND attempts > 0)
FROM tasks;

-- name: status_holders
-- Tasks in progress per process holding them: claimed (not started: started_at
-- NULL) and running, with the seconds left on the soonest lease to expire
-- (negative: expired, the holder has stopped renewing).
SELECT locked_by, count(*) FILTER (WHERE started_at IS NULL),
       count(*) FILTER (WHERE started_at IS NOT NULL),
       extract(epoch FROM min(locked_until) - now())
FROM tasks
WHERE status = 'in_progress'
GROUP BY locked_by
ORDER BY count(*) DESC, locked_by;

-- name: status_errors
-- The %(limit)s most frequent kinds of error among tasks ended in error: errors
-- alike (the same exception type, the rest of the message the same but for its
-- numbers, hex ids, UUIDs and quoted values: "card declined for customer-17" and
-- "... customer-42") are one kind, shown by one example (its least message) with
-- the number of its tasks and of its distinct messages. Exact messages are
-- grouped first, so that the patterns run once per distinct message, not once per
-- task; a message is shaped by its first 500 characters.
WITH messages AS (
    SELECT error, count(*) AS tasks
    FROM tasks
    WHERE status = 'error'
    GROUP BY error
), typed AS (
    SELECT error, tasks, substring(error FROM '^[A-Za-z_][A-Za-z0-9_.]*: ') AS kind
    FROM messages
), shaped AS (
    SELECT error, tasks,
           coalesce(kind, '') || regexp_replace(regexp_replace(regexp_replace(
               substr(left(error, 500), coalesce(length(kind), 0) + 1),
               '''[^'']*''|"[^"]*"', '''?''', 'g'),
               '[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}'
               '|\m(0x)?[0-9A-Fa-f]*[0-9][0-9A-Fa-f]*\M', '#', 'g'),
               '[0-9]+', '#', 'g') AS shape
    FROM typed
)
SELECT min(error) AS example, sum(tasks)::bigint AS tasks, count(*) AS messages
FROM shaped
GROUP BY shape
ORDER BY sum(tasks) DESC, min(error)
LIMIT %(limit)s;

-- name: task_get
-- One task, every column (`taskworker show`).
SELECT * FROM tasks WHERE id = %(id)s;

-- name: task_outcomes
-- What `taskworker.result` and `taskworker.wait` read of the tasks %(ids)s: id,
-- status, format, the text result, the return value as JSON text, the error and
-- its traceback.
SELECT id, status, format, result, return_value::text, error, traceback FROM tasks
WHERE id = ANY(%(ids)s::bigint[]);

-- name: await_tasks
-- Someone waits for the outcomes of the tasks %(ids)s: mark the unfinished ones,
-- so that the row sends a notification on channel taskworker_finished when it
-- finishes (migration 012). Only marked rows notify: the busy path sends none.
-- Rows another transaction has locked now (serve writing their outcomes) are
-- skipped, not waited for, and returned: the caller marks them one at a time
-- after committing these (await_task). Waiting for them here, while holding the
-- rows marked so far, deadlocked with serve's write of several outcomes, which
-- locks them in the order they finished (seen once in CI: the waiter got
-- "deadlock detected").
WITH marked AS (
    UPDATE tasks SET awaited = true
    WHERE id IN (SELECT id FROM tasks
                 WHERE id = ANY(%(ids)s::bigint[])
                   AND status NOT IN ('done', 'error', 'cancelled') AND NOT awaited
                 FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING id
)
SELECT id FROM tasks
WHERE id = ANY(%(ids)s::bigint[]) AND status NOT IN ('done', 'error', 'cancelled')
  AND NOT awaited AND id NOT IN (SELECT id FROM marked)
ORDER BY id;

-- name: await_task
-- await_tasks for one task it skipped: this transaction holds no other row, so
-- waiting for the row's lock cannot close a cycle.
UPDATE tasks SET awaited = true
WHERE id = %(id)s AND status NOT IN ('done', 'error', 'cancelled') AND NOT awaited;

-- name: listen_finished
-- Receive the notifications of awaited tasks finishing (payload: the task's id).
LISTEN taskworker_finished;

-- name: unlisten_finished
UNLISTEN taskworker_finished;

-- name: task_states
-- Status, holder and whether it started (started_at set) of the tasks %(ids)s, to
-- explain why a command left them alone.
SELECT id, status, locked_by, started_at IS NOT NULL FROM tasks
WHERE id = ANY(%(ids)s::bigint[]);

-- name: retry
-- Put up to %(limit)s tasks in error back to pending, due now, as if new: attempts
-- and rescues start again from 0 (a fresh retry and rescue budget); the last error
-- text is kept. Only the tasks %(ids)s when given, only those that ended at or
-- after %(since)s when given, never one that ended after %(before)s (the command's
-- start: a task failing again meanwhile is not retried twice). A task whose
-- unique_key a live task holds is left in error (see retry_blocked), and of
-- several picked with the same key only the lowest id is retried. (A concurrent
-- enqueue or retry can still take the key first: the statement then fails on
-- tasks_unique_key_idx, and the caller runs it again.)
WITH locked AS (
    SELECT id, unique_key FROM tasks AS e
    WHERE status = 'error'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s::timestamptz)
      AND updated_at <= %(before)s
      AND (unique_key IS NULL
           OR NOT EXISTS (SELECT 1 FROM tasks AS live
                          WHERE live.unique_key = e.unique_key
                            AND live.status IN ('pending', 'in_progress')))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM locked
    WHERE unique_key IS NULL
       OR id = (SELECT min(same.id) FROM locked AS same WHERE same.unique_key = locked.unique_key)
)
UPDATE tasks AS t
SET status = 'pending',
    attempts = 0,
    rescues = 0,
    unstarted_rescues = 0,
    run_alone = false,
    run_at = now(),
    locked_by = NULL,
    locked_until = NULL,
    updated_at = now()
FROM picked
WHERE t.id = picked.id
RETURNING t.id;

-- name: retry_blocked
-- Tasks in error that retry leaves alone because a live task holds their
-- unique_key (same selection as retry): their id and key, and the live task's id,
-- status and whether it started (started_at set).
SELECT e.id, e.unique_key, live.id, live.status, live.started_at IS NOT NULL
FROM tasks AS e
JOIN tasks AS live
  ON live.unique_key = e.unique_key AND live.status IN ('pending', 'in_progress')
WHERE e.status = 'error' AND e.unique_key IS NOT NULL
  AND (%(ids)s::bigint[] IS NULL OR e.id = ANY(%(ids)s::bigint[]))
  AND (%(since)s::timestamptz IS NULL OR e.updated_at >= %(since)s::timestamptz)
  AND e.updated_at <= %(before)s
ORDER BY e.id;

-- name: cancel
-- Cancel the tasks %(ids)s that are pending (or waiting for others: a workflow's
-- step; migration 015 then cancels what waits for it); for the running ones, record the
-- request (their status is left to their holder: changing it here would make the
-- holder's fenced write discard its outcome, and free the task's unique key and
-- concurrency slot while its handler still runs) and notify the holder, which
-- stops the handler and writes 'cancelled'. Finished tasks are left alone.
-- %(source)s names who asks (migration 013): a pending task's error says
-- `cancelled: by <source>`; a running one keeps the first request's source for
-- its holder's write. Returns (id, was running).
WITH pending AS (
    UPDATE tasks
    SET status = 'cancelled', error = 'cancelled: by ' || %(source)s,
        cancel_requested_by = %(source)s, updated_at = now()
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('pending', 'waiting')
    RETURNING id
),
running AS (
    UPDATE tasks
    SET cancel_requested_at = coalesce(cancel_requested_at, now()),
        cancel_requested_by = coalesce(cancel_requested_by, %(source)s)
    WHERE id = ANY(%(ids)s::bigint[]) AND status = 'in_progress'
    RETURNING id
)
SELECT id, false FROM pending
UNION ALL
SELECT r.id, true FROM running AS r
CROSS JOIN LATERAL (SELECT pg_notify('taskworker_cancel', r.id::text)) AS n;

-- name: prune
-- Delete up to %(limit)s finished tasks (status in %(statuses)s) last changed
-- before %(before)s, with ids above %(after)s, lowest ids first. Small batches keep
-- each transaction's row locks few and short; the conditions are checked again on
-- the locked rows, so a task retried meanwhile is not deleted. The batch is a CTE,
-- run once: as an `id IN (subquery)` the planner may rescan the subquery for
-- each row, and each rescan, skipping the rows this statement already deleted,
-- takes the next batch (seen: one DELETE of 25 rows with a limit of 4). A
-- workflow's task whose result a waiting task will receive is kept until that
-- task is released (migration 015: a group's callback reads its members' results).
-- One batch at a time across every process and host: a batch runs only with the
-- transaction advisory lock 7261835003, tried; without it the statement deletes
-- nothing and returns one row, NULL (each serve prunes, and ten pruners deleting
-- at once would take ten backends' CPU from the claims of a busy server).
WITH turn AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(7261835003) AS mine
),
batch AS MATERIALIZED (
    SELECT id FROM tasks AS p
    WHERE (SELECT mine FROM turn)
      AND status = ANY(%(statuses)s::text[]) AND updated_at < %(before)s
      AND id > %(after)s
      AND (next_ids IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS c
                                           WHERE c.id = ANY(p.next_ids)
                                             AND c.status = 'waiting'))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM tasks AS t
    USING batch
    WHERE t.id = batch.id
      AND t.status = ANY(%(statuses)s::text[]) AND t.updated_at < %(before)s
    RETURNING t.id
)
SELECT id FROM deleted
UNION ALL
SELECT NULL WHERE NOT (SELECT mine FROM turn);

-- name: prune_keys
-- Delete the rows of taskworker_keys (migration 017) whose key has no pending or
-- running task left; the next claim that meets the key makes its row again.
-- SKIP LOCKED: a key a claim is taking now is left for the next pass. Returns
-- one row per key deleted.
DELETE FROM taskworker_keys AS z
USING (SELECT k.task, k.key FROM taskworker_keys AS k
       WHERE NOT EXISTS (SELECT 1 FROM tasks AS t
                         WHERE t.status = 'pending' AND t.task = k.task
                           AND t.concurrency_key = k.key)
         AND NOT EXISTS (SELECT 1 FROM tasks AS t
                         WHERE t.status = 'in_progress' AND t.task = k.task
                           AND t.concurrency_key = k.key)
       FOR UPDATE SKIP LOCKED) AS idle
WHERE z.task = idle.task AND z.key = idle.key
RETURNING 1;

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

-- name: enqueue_tick
-- Enqueue tick %(tick)s of periodic task %(task)s (with the text %(payload)s, or
-- the JSON call %(arguments)s: format 2), once across every process: the
-- tick's row in taskworker_ticks and its task are written by this one statement.
-- The tick is taken only if no row has it (ON CONFLICT: another process took it;
-- a racing one waits for that insert to commit), if it is newer than the task's
-- latest recorded tick (a host whose clock lags never enqueues an older tick),
-- and, for a task with no recorded tick, if it is not older than %(since)s (a
-- process's start: a new schedule starts with its next tick, not the last one
-- missed). With %(skip_if_running)s, a tick that finds a run of the task in
-- progress, or pending in its queue (read through tasks_in_progress_idx and
-- tasks_name_claim_idx: a backlog of other tasks costs nothing), is taken with
-- task_id NULL (skipped). The task's id is drawn before both inserts so that the
-- tick's row names it; the existence check keeps the other processes from drawing
-- ids for a tick already taken. The task's rows of ticks beyond the newest 10 are
-- deleted. Returns whether the tick was taken, the new task's id, and the live run
-- that made it skip: its id, status, and whether it started (in progress with
-- started_at set: running; without, claimed and waiting in its process).
WITH last AS (
    SELECT max(tick) AS tick FROM taskworker_ticks WHERE task = %(task)s
), live AS (
    (SELECT id, status, started_at IS NOT NULL AS started FROM tasks
     WHERE %(skip_if_running)s AND status = 'in_progress' AND task = %(task)s
     LIMIT 1)
    UNION ALL
    (SELECT id, status, false FROM tasks
     WHERE %(skip_if_running)s AND status = 'pending' AND queue = %(queue)s
       AND coalesce(task, '') = %(task)s AND format <= 2
     LIMIT 1)
    LIMIT 1
), taken AS (
    INSERT INTO taskworker_ticks (task, tick, task_id)
    SELECT %(task)s, %(tick)s,
           CASE WHEN NOT EXISTS (SELECT 1 FROM live)
                THEN nextval(pg_get_serial_sequence('tasks', 'id')) END
    FROM last
    WHERE coalesce(%(tick)s > last.tick, %(tick)s >= %(since)s)
      AND NOT EXISTS (SELECT 1 FROM taskworker_ticks
                      WHERE task = %(task)s AND tick = %(tick)s)
    ON CONFLICT DO NOTHING
    RETURNING task_id
), created AS (
    INSERT INTO tasks (id, task, queue, priority, payload, arguments, format)
    SELECT task_id, %(task)s, %(queue)s, %(priority)s, %(payload)s, %(arguments)s::jsonb,
           CASE WHEN %(arguments)s IS NULL THEN 1 ELSE 2 END
    FROM taken
    WHERE task_id IS NOT NULL
    RETURNING id
), trimmed AS (
    DELETE FROM taskworker_ticks
    WHERE task = %(task)s AND EXISTS (SELECT 1 FROM taken)
      AND tick < (SELECT tick FROM taskworker_ticks WHERE task = %(task)s
                  ORDER BY tick DESC OFFSET 8 LIMIT 1)
)
SELECT EXISTS (SELECT 1 FROM taken), (SELECT id FROM created),
       (SELECT id FROM live), (SELECT status FROM live), (SELECT started FROM live);

-- name: schedule_ticks
-- The latest recorded tick of each periodic task, with its task's status (NULL:
-- skipped, or the task was pruned) and whether it started (started_at is set),
-- for `taskworker schedule` and the dashboard.
SELECT t.task, t.tick, t.task_id, k.status, coalesce(k.started_at IS NOT NULL, false)
FROM (SELECT DISTINCT ON (task) task, tick, task_id
      FROM taskworker_ticks
      ORDER BY task, tick DESC) AS t
LEFT JOIN tasks AS k ON k.id = t.task_id
ORDER BY t.task;

-- name: live_schedules
-- Each live process's periodic schedules (name -> "cron ..." / "every Ns"), for
-- `taskworker schedule`: a process is live while its seen_at is less than two
-- leases old.
SELECT holder, schedules
FROM taskworker_processes
WHERE seen_at + lease_seconds * 2 * interval '1 second' > now()
ORDER BY holder;

-- name: process_register
-- Record (or refresh) this serve process in taskworker_processes: what it serves
-- and how long its heartbeat may go quiet (lease_seconds) before it counts as gone.
INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, default_handler,
                                  schedules, lease_seconds, asleep)
VALUES (%(holder)s, %(host)s, %(pid)s, %(queues)s::text[], %(tasks)s::text[],
        %(default_handler)s, %(schedules)s::jsonb, %(lease_seconds)s, %(asleep)s)
ON CONFLICT (holder) DO UPDATE
SET host = excluded.host, pid = excluded.pid, queues = excluded.queues,
    tasks = excluded.tasks, default_handler = excluded.default_handler,
    schedules = excluded.schedules, lease_seconds = excluded.lease_seconds,
    asleep = excluded.asleep, seen_at = now();

-- name: process_asleep
-- This process may sleep until a NOTIFY wakes it: the insert trigger notifies
-- while a row says so (migration 018). Marked only with advisory lock
-- 7261835002 taken exclusively, tried, not waited for: the trigger holds it
-- shared from its look until its transaction ends, so a producer that looked
-- before this mark and has not committed makes the mark fail (and the process
-- polls instead). Returns whether the lock was had, and whether the row was
-- marked (none: the process's row is missing).
WITH lock AS (SELECT pg_try_advisory_xact_lock(7261835002) AS had),
     mark AS (UPDATE taskworker_processes SET asleep = true
              FROM lock WHERE lock.had AND holder = %(holder)s RETURNING 1)
SELECT had, EXISTS (SELECT 1 FROM mark) FROM lock;

-- name: process_awake
-- This process claims again at once (its claims come back full): inserts need
-- not notify it.
UPDATE taskworker_processes SET asleep = false WHERE holder = %(holder)s;

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

-- name: reporter_claim
-- Take or keep the metrics reporter's row (taskworker_metrics_reporter) for
-- %(seconds)s more seconds: kept by its holder, taken by another only once it has
-- run out. One statement (PgBouncer hands each to any server connection); a
-- racing claim waits for the other's row lock and sees its outcome. A row back:
-- %(holder)s reports.
INSERT INTO taskworker_metrics_reporter AS r (holder, locked_until)
VALUES (%(holder)s, now() + %(seconds)s * interval '1 second')
ON CONFLICT (one) DO UPDATE
SET holder = excluded.holder, locked_until = excluded.locked_until
WHERE r.holder = excluded.holder OR r.locked_until < now()
RETURNING 1;

-- name: reporter_release
-- A reporter shutting down hands the row back: the next claim of another
-- process takes it at once instead of waiting for it to run out.
DELETE FROM taskworker_metrics_reporter WHERE holder = %(holder)s;

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
-- Pending and in-progress tasks per (queue, task name): due, scheduled for later,
-- claimed (in progress, not started: started_at NULL), running (started), and the
-- seconds the oldest due one has waited. Reads only pending and in-progress rows,
-- each set through its partial index (a name of '' is a task without a name:
-- names are never empty), never the finished ones.
WITH live AS (
    SELECT queue, coalesce(task, '') AS name, run_at, true AS pending, false AS started
    FROM tasks WHERE status = 'pending'
    UNION ALL
    SELECT queue, coalesce(task, ''), run_at, false, started_at IS NOT NULL
    FROM tasks WHERE status = 'in_progress'
)
SELECT queue, nullif(name, ''),
       count(*) FILTER (WHERE pending AND run_at <= now()),
       count(*) FILTER (WHERE pending AND run_at > now()),
       count(*) FILTER (WHERE NOT pending AND NOT started),
       count(*) FILTER (WHERE started),
       extract(epoch FROM now() - min(run_at) FILTER (WHERE pending AND run_at <= now()))
FROM live
GROUP BY queue, name
ORDER BY queue, name;

-- name: dash_tasks
-- The dashboard's task list: tasks with ids in [%(floor)s, %(before)s), newest
-- first, matching the filters given (NULL: any; %(started)s: whether started_at
-- is set, claimed or running among tasks in progress); a page of %(limit)s. The window
-- bounds the rows a filter without an index may read (the caller widens it page
-- by page); text is searched in dash_searched_text (hidden arguments left out).
-- With %(workflow)s, the tasks of that workflow (migration 015): the caller
-- gives no window, and the condition (the value is sent in the statement)
-- reads them through tasks_workflow_idx. Returns the columns of
-- store/dashboard.py's Row.
SELECT id, status, queue, task, priority, attempts, rescues, left(payload, 200),
       length(payload), left(error, 200), created_at, updated_at, run_at, locked_by,
       cancel_requested_at IS NOT NULL, started_at, left(arguments::text, 200),
       length(arguments::text)
FROM tasks
WHERE id < %(before)s AND id >= %(floor)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(started)s::bool IS NULL OR (started_at IS NOT NULL) = %(started)s::bool)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR coalesce(task, '') = %(task)s::text)
  AND (%(workflow)s::bigint IS NULL OR workflow_id = %(workflow)s::bigint)
  AND (%(pattern)s::text IS NULL
       OR (/* include dash_searched_text */) ILIKE %(pattern)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dash_tasks_text_finished
-- Text search among finished tasks below id %(before)s, newest first:
-- (a) the tasks the indexer has reached, through taskworker_search's trigram
--     index, range by range of 2^18 task ids (migration 021), newest range first,
--     until %(limit)s are found or the oldest range is searched. A search's cost
--     is then that of the ranges it reads, not of the whole history: a word whose
--     matches are many but spread thin, or a filter (status, queue, name) that
--     leaves few of them, reads the newest ranges only, where one index scan of
--     the whole table would list every match and recheck each. Within a range
--     the candidates are sorted by id (no bound on id is given to that scan,
--     only the range and the words, so that the range's index is the one index
--     it can use: given `task_id < before`, the planner walked the primary key
--     below it, the whole table, once per range) and rechecked against the task
--     as it is now only until enough are found (status and text: a stale side row, left
--     by a retry or a delete, never shows a wrong result; the side table holds
--     every task's words, and the recheck leaves out the arguments this
--     dashboard hides, so that they never match). The recheck is a subquery per
--     candidate, not a join: the planner has no statistics on the text of tasks
--     and would scan the table to join it.
-- (b) the tasks finished after the indexer's position (%(indexed_at)s,
--     %(indexed_id)s: read by the caller before this statement, so that the
--     planner sees the values and walks tasks_finished_at_idx from there; given
--     as a subquery it planned a walk of the whole table backwards by id),
--     searched directly: few while the indexer keeps up. A later position than
--     the one read only moves rows from (b) to (a), and the UNION lists a task
--     found by both once (re-finished since it was indexed).
-- The tasks found are then read by id (`= ANY`: a probe of the primary key
-- each); a join let the planner merge them with a walk of the primary key
-- down from the newest task, through every task above the ones found.
WITH RECURSIVE ranges (r, ids, found_before) AS (
    -- r: a range of ids (task_id >> 18), ids: the matches found there,
    -- found_before: the matches of the ranges above it
    SELECT ((SELECT max(task_id) FROM taskworker_search WHERE task_id < %(before)s) >> 18) + 1,
           '{}'::bigint[], 0
    UNION ALL
    SELECT r.r - 1,
           array(SELECT c.task_id
                 FROM (SELECT s.task_id
                       FROM taskworker_search s
                       WHERE (s.task_id >> 18) = r.r - 1
                         AND s.words ILIKE %(pattern)s::text
                       ORDER BY s.task_id DESC
                       OFFSET 0) AS c
                 WHERE c.task_id < %(before)s AND coalesce((
                     SELECT t.status IN ('done', 'error', 'cancelled')
                            AND (/* include dash_searched_text */) ILIKE %(pattern)s::text
                            AND (%(status)s::text IS NULL OR t.status = %(status)s::text)
                            AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
                            AND (%(task)s::text IS NULL
                                 OR coalesce(t.task, '') = %(task)s::text)
                     FROM tasks t WHERE t.id = c.task_id), false)
                 ORDER BY c.task_id DESC
                 LIMIT %(limit)s),
           r.found_before + cardinality(r.ids)
    FROM ranges r
    WHERE r.found_before + cardinality(r.ids) < %(limit)s
      AND r.r - 1 >= (SELECT min(task_id) FROM taskworker_search) >> 18
), found (id) AS MATERIALIZED (
    (SELECT unnest(ids) FROM ranges)
    UNION
    (SELECT t.id
     FROM tasks t
     WHERE t.status IN ('done', 'error', 'cancelled')
       AND t.updated_at >= %(indexed_at)s::timestamptz
       AND (t.updated_at, t.id) > (%(indexed_at)s::timestamptz, %(indexed_id)s::bigint)
       AND t.id < %(before)s
       AND (/* include dash_searched_text */) ILIKE %(pattern)s::text
       AND (%(status)s::text IS NULL OR t.status = %(status)s::text)
       AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
       AND (%(task)s::text IS NULL OR coalesce(t.task, '') = %(task)s::text)
     ORDER BY t.id DESC
     LIMIT %(limit)s)
)
SELECT id, status, queue, task, priority, attempts, rescues, left(payload, 200),
       length(payload), left(error, 200), created_at, updated_at, run_at, locked_by,
       cancel_requested_at IS NOT NULL, started_at, left(arguments::text, 200),
       length(arguments::text)
FROM tasks
WHERE id = ANY (ARRAY(SELECT id FROM found))
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dash_search_position
-- Where the search indexer has got, (updated_at, id): dash_tasks_text_finished's
-- %(indexed_at)s and %(indexed_id)s.
SELECT indexed_at, indexed_id FROM taskworker_search_progress;

-- name: dash_search_lag
-- How far the search indexer is behind: where it has got (updated_at, id), the
-- finished tasks past that position (counted up to %(enough)s, through
-- tasks_finished_at_idx), the oldest of them's updated_at, and the database's now();
-- NULL for where it has got before its first task.
SELECT CASE WHEN isfinite(p.indexed_at) THEN p.indexed_at END, p.indexed_id,
       (SELECT count(*) FROM (
            SELECT 1 FROM tasks t
            WHERE t.status IN ('done', 'error', 'cancelled') AND t.updated_at >= p.indexed_at
              AND (t.updated_at, t.id) > (p.indexed_at, p.indexed_id)
            LIMIT %(enough)s) AS past),
       (SELECT min(t.updated_at) FROM tasks t
        WHERE t.status IN ('done', 'error', 'cancelled') AND t.updated_at >= p.indexed_at
          AND (t.updated_at, t.id) > (p.indexed_at, p.indexed_id)),
       now()
FROM taskworker_search_progress p;

-- name: search_index_pass
-- One pass of the dashboard's search indexer (store/search.py says why it is
-- correct): copy the words of up to %(batch)s finished tasks past the position
-- (the first 1,000 characters of payload, of error and of arguments as JSON, the
-- last for a call only; as dash_searched_text reads them, so that what a search
-- matches there matches here),
-- in (updated_at, id) order through tasks_finished_at_idx and below the
-- watermark the previous pass stored; forget up to %(batch)s side rows of tasks
-- below the table's lowest id (the pruner removed them); store the new position
-- and a new watermark: least(now(), the start of the oldest other transaction
-- running in this database) minus %(margin)s seconds. The progress row is taken
-- FOR UPDATE SKIP LOCKED: a second dashboard indexing at the same moment does
-- nothing (no rows). Returns the rows copied and the new position.
WITH progress AS (
    SELECT indexed_at, indexed_id, watermark FROM taskworker_search_progress
    FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT t.id, t.updated_at,
           left(coalesce(t.payload, ''), 1000) || ' ' || left(coalesce(t.error, ''), 1000)
           || coalesce(' ' || left(t.arguments::text, 1000), '') AS words
    FROM tasks t
    WHERE t.status IN ('done', 'error', 'cancelled')
      AND t.updated_at >= (SELECT indexed_at FROM progress)
      AND (t.updated_at, t.id) > ((SELECT indexed_at FROM progress),
                                  (SELECT indexed_id FROM progress))
      AND t.updated_at < (SELECT watermark FROM progress)
    ORDER BY t.updated_at, t.id
    LIMIT %(batch)s
), copied AS (
    INSERT INTO taskworker_search (task_id, words, finished_at)
    SELECT id, words, updated_at FROM batch
    ON CONFLICT (task_id) DO UPDATE SET words = EXCLUDED.words,
                                        finished_at = EXCLUDED.finished_at
    RETURNING 1
), forgotten AS (
    DELETE FROM taskworker_search
    WHERE task_id = ANY(ARRAY(
        SELECT task_id FROM taskworker_search
        WHERE task_id < coalesce((SELECT min(id) FROM tasks), %(highest)s)
        ORDER BY task_id
        LIMIT %(batch)s))
    RETURNING 1
), last AS (
    SELECT updated_at, id FROM batch ORDER BY updated_at DESC, id DESC LIMIT 1
), oldest AS (
    SELECT min(xact_start) AS xact_start FROM pg_stat_activity
    WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND backend_type = 'client backend' AND pid <> pg_backend_pid()
      AND xact_start IS NOT NULL
)
UPDATE taskworker_search_progress p
SET indexed_at = coalesce((SELECT updated_at FROM last), p.indexed_at),
    indexed_id = coalesce((SELECT id FROM last), p.indexed_id),
    watermark = least(now(), (SELECT xact_start FROM oldest))
                - make_interval(secs => %(margin)s),
    passed_at = now()
FROM progress
RETURNING (SELECT count(*) FROM copied), (SELECT count(*) FROM forgotten),
          CASE WHEN isfinite(p.indexed_at) THEN p.indexed_at END, p.indexed_id;

-- name: dash_tasks_text_live
-- Text search among the tasks in status %(status)s (pending or in_progress; with
-- %(started)s, those whose started_at is set or not) below id %(before)s: read
-- through that status's partial index, as small as the set.
SELECT id, status, queue, task, priority, attempts, rescues, left(payload, 200),
       length(payload), left(error, 200), created_at, updated_at, run_at, locked_by,
       cancel_requested_at IS NOT NULL, started_at, left(arguments::text, 200),
       length(arguments::text)
FROM tasks
WHERE status = %(status)s::text
  AND (%(started)s::bool IS NULL OR (started_at IS NOT NULL) = %(started)s::bool)
  AND (/* include dash_searched_text */) ILIKE %(pattern)s::text
  AND id < %(before)s
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(task)s::text IS NULL OR coalesce(task, '') = %(task)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dash_searched_text
-- What the dashboard's text search matches in a task (a part of dash_tasks,
-- dash_tasks_text_finished and dash_tasks_text_live, never sent alone): the first
-- 1,000 characters of its payload, of its error and of its arguments as JSON,
-- as the search indexer copies them; but never the payload nor the arguments of
-- a task whose arguments this dashboard hides (DASHBOARD_HIDE_ARGUMENTS: every
-- task with %(hide_all)s, else those named in %(hidden)s), which would let a
-- search tell their values. Either text is a part of the indexer's words, so
-- that a task it matches is among those the side table's index finds.
CASE WHEN %(hide_all)s::bool OR coalesce(task, '') = ANY(%(hidden)s::text[])
     THEN ' ' || left(coalesce(error, ''), 1000)
     ELSE left(coalesce(payload, ''), 1000) || ' ' || left(coalesce(error, ''), 1000)
          || coalesce(' ' || left(arguments::text, 1000), '')
END;

-- name: dash_id_range
-- The lowest and the highest task id (where the list's windows start and end):
-- both read at an end of the primary key.
SELECT min(id), max(id) FROM tasks;

-- name: dash_counts
-- Tasks by status (and for those in progress, whether started_at is set), queue
-- and task name ('' for none): a scan of the whole table, which the dashboard's
-- sampler runs in the background, seldom on a large table.
SELECT status, status = 'in_progress' AND started_at IS NOT NULL, queue,
       coalesce(task, ''), count(*)
FROM tasks
GROUP BY 1, 2, 3, 4;

-- name: dash_finished_per_minute
-- Tasks done and in error per minute since %(since)s, through tasks_finished_at_idx:
-- the minute (epoch seconds), done, error.
SELECT extract(epoch FROM date_trunc('minute', updated_at))::bigint,
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'error')
FROM tasks
WHERE status IN ('done', 'error', 'cancelled') AND updated_at >= to_timestamp(%(since)s)
GROUP BY 1
ORDER BY 1;

-- name: dash_now
-- The database's clock (epoch seconds): the chart's minutes are the database's.
SELECT extract(epoch FROM now());

-- name: dash_delete_finished
-- Delete the finished tasks among %(ids)s (a task retried or re-enqueued since it
-- was listed is left alone, and so is a workflow's task whose result a waiting
-- task will receive), and their words in the search side table; the ids
-- deleted.
WITH deleted AS (
    DELETE FROM tasks AS p
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('done', 'error', 'cancelled')
      AND (next_ids IS NULL OR NOT EXISTS (SELECT 1 FROM tasks AS c
                                           WHERE c.id = ANY(p.next_ids)
                                             AND c.status = 'waiting'))
    RETURNING id
), unsearched AS (
    DELETE FROM taskworker_search WHERE task_id IN (SELECT id FROM deleted)
)
SELECT id FROM deleted;

-- name: dash_count_matching
-- How many tasks an action on a filter (no text: the text's are counted through
-- dash_tasks_text_finished) would change, up to %(cap)s: those matching the
-- filters given (NULL: any), finished ones only with %(finished)s. What a bulk
-- action's confirmation says; it stops at the cap, so that a common filter reads
-- no more than that many rows (a rare one reads the table, as the action would).
SELECT count(*)
FROM (SELECT 1
      FROM tasks
      WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
        AND (NOT %(finished)s::bool OR status IN ('done', 'error', 'cancelled'))
        AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
        AND (%(task)s::text IS NULL OR coalesce(task, '') = %(task)s::text)
      LIMIT %(cap)s) AS matching;

-- name: workflow_ids
-- A new workflow's id, and %(count)s task ids drawn in increasing order, for a
-- workflow enqueued in one call: its rows name each other (next_ids) before
-- they are inserted.
SELECT nextval('taskworker_workflow_ids'),
       ARRAY(SELECT nextval(pg_get_serial_sequence('tasks', 'id'))
             FROM generate_series(1, %(count)s) ORDER BY 1);

-- name: enqueue_workflow
-- Insert tasks of workflow %(workflow_id)s (migration 015), one per element of
-- the arrays: its id (from workflow_ids), task name, queue, priority, JSON
-- call, whether it waits for other tasks ('waiting', else 'pending'), the ids
-- its result goes to (a bigint[] literal, NULL: none) and whether they join it
-- with others (next_joins: a group's member), and when it is due
-- (%(delays)s seconds from now(), or at %(run_ats)s); every row with the
-- enqueue's trace context %(trace)s (JSON text or NULL, as in enqueue: the
-- workflow's tasks share its trace). Tasks that wait get their
-- taskworker_waits row (%(parents)s parents) in the same statement.
WITH added AS (
    INSERT INTO tasks (id, task, queue, priority, arguments, format, status, workflow_id,
                       next_ids, next_joins, run_at, trace_context)
    SELECT r.id, r.task, r.queue, r.priority, r.arguments::jsonb, 2,
           CASE WHEN r.parents > 0 THEN 'waiting' ELSE 'pending' END, %(workflow_id)s::bigint,
           r.next_ids::bigint[], r.next_joins,
           coalesce(r.run_at, now() + coalesce(r.delay, 0) * interval '1 second'),
           %(trace)s::jsonb
    FROM unnest(%(ids)s::bigint[], %(tasks)s::text[], %(queues)s::text[],
                %(priorities)s::int[], %(arguments)s::text[], %(parents)s::int[],
                %(next_ids)s::text[], %(next_joins)s::bool[], %(delays)s::float8[],
                %(run_ats)s::timestamptz[])
         AS r(id, task, queue, priority, arguments, parents, next_ids, next_joins, delay, run_at)
    RETURNING id
)
INSERT INTO taskworker_waits (task_id, parents_left)
SELECT w.id, w.parents
FROM unnest(%(ids)s::bigint[], %(parents)s::int[]) AS w(id, parents)
WHERE w.parents > 0 AND (SELECT count(*) FROM added) > 0;

-- name: workflow_of
-- Where task %(id)s stands in its workflow, for `taskworker show` and the
-- dashboard: its workflow, the tasks its result goes to (id, task name, status),
-- the tasks it waits for or got its input from (at most %(limit)s of them, by
-- id, with their count by status), and how many it still waits for.
SELECT t.workflow_id,
       (SELECT coalesce(json_agg(json_build_array(c.id, c.task, c.status) ORDER BY c.id), '[]')
        FROM tasks AS c WHERE c.id = ANY(t.next_ids))::text,
       (SELECT coalesce(json_agg(json_build_array(p.id, p.task, p.status) ORDER BY p.id), '[]')
        FROM (SELECT id, task, status FROM tasks
              WHERE workflow_id = t.workflow_id AND next_ids @> ARRAY[t.id]
              ORDER BY id LIMIT %(limit)s) AS p)::text,
       (SELECT coalesce(json_object_agg(status, n), '{}') FROM (
            SELECT status, count(*) AS n FROM tasks
            WHERE workflow_id = t.workflow_id AND next_ids @> ARRAY[t.id]
            GROUP BY status) AS s)::text,
       (SELECT parents_left FROM taskworker_waits WHERE task_id = t.id)
FROM tasks AS t
WHERE t.id = %(id)s AND t.workflow_id IS NOT NULL;

-- name: workflow_state
-- The tasks of workflow %(workflow_id)s by status (through tasks_workflow_idx),
-- its first and last task ids, and when its last change was.
SELECT status, count(*), min(id), max(id), max(updated_at)
FROM tasks
WHERE workflow_id = %(workflow_id)s
GROUP BY status
ORDER BY status;

-- name: cancel_workflow
-- Cancel workflow %(workflow_id)s: its tasks that have not started (pending,
-- and waiting for others) end cancelled at once; the ones in progress are asked
-- to stop, as `cancel` asks (their holder stops the handler, or does not start
-- it, and writes 'cancelled'). Rows are locked in id order, as the outcomes of
-- a workflow reach them (a member before the callback it counts down). Finished
-- tasks are left alone. %(source)s names who asks, as in cancel. Returns (id,
-- was in progress).
WITH locked AS MATERIALIZED (
    SELECT id, status FROM tasks
    WHERE workflow_id = %(workflow_id)s AND status IN ('pending', 'waiting', 'in_progress')
    ORDER BY id
    FOR UPDATE
),
stopped AS (
    UPDATE tasks AS t
    SET status = 'cancelled', updated_at = now(), cancel_requested_by = %(source)s,
        error = 'cancelled: its workflow, by ' || %(source)s
    FROM locked AS l
    WHERE t.id = l.id AND l.status IN ('pending', 'waiting')
    RETURNING t.id
),
asked AS (
    UPDATE tasks AS t
    SET cancel_requested_at = coalesce(t.cancel_requested_at, now()),
        cancel_requested_by = coalesce(t.cancel_requested_by, %(source)s)
    FROM locked AS l
    WHERE t.id = l.id AND l.status = 'in_progress'
    RETURNING t.id
)
SELECT id, false FROM stopped
UNION ALL
SELECT a.id, true FROM asked AS a
CROSS JOIN LATERAL (SELECT pg_notify('taskworker_cancel', a.id::text)) AS n;
