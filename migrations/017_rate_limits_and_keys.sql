-- taskworker: no transaction
-- Rate limits and concurrency per key (part 15). Sent statement by statement,
-- outside a transaction, so that the key index is built CONCURRENTLY (see
-- 007_claim_indexes.sql); each statement may run again after an interrupted run.
--
-- Rate limits (rate_limit="100/m"): one token row per start the window allows.
-- A claim of a rate-limited task takes a token whose free_at has passed, in the
-- same statement, and sets free_at to now() plus the window (plus a guard for
-- the handler's start: see catalog.py). A token is used once per window, so no
-- window ever holds more starts than the task has tokens, across every process
-- and host. `per`: the window in seconds, for `status` and the dashboard.
CREATE TABLE IF NOT EXISTS taskworker_rate_tokens (
    task    text    NOT NULL,
    token   integer NOT NULL,
    per     float8  NOT NULL,
    free_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (task, token)
);

-- Concurrency per key (max_running_per_key with .options(concurrency_key=...)):
-- the key a task was enqueued with. A keyed row has format 3 (a JSON call that
-- only a process which knows keys may claim: every earlier claim reads format
-- <= 2), so a process of an older version never runs it past its key's limit.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS concurrency_key text;

-- One row per (task, key) with keyed tasks, made by the first claim that meets
-- the key and deleted by the pruner once the key has no live task. A claim of a
-- keyed task locks its key's row (SKIP LOCKED: two claims never wait on each
-- other) and raises `claims`: a claim whose snapshot predates another's claim
-- of the key finds `claims` changed and leaves the key for its next claim, so the
-- running count it read is never stale (no advisory locks: they break behind
-- PgBouncer in transaction mode).
CREATE TABLE IF NOT EXISTS taskworker_keys (
    task   text   NOT NULL,
    key    text   NOT NULL,
    claims bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task, key)
);

-- The keys with pending tasks, walked one index descent per key (a key's
-- backlog is never read through to reach the next key), and each key's first
-- tasks in claim order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_key_claim_idx
    ON tasks (task, concurrency_key, priority DESC, run_at, id)
    WHERE status = 'pending' AND concurrency_key IS NOT NULL;

-- How many of a key's tasks run now.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_key_running_idx
    ON tasks (task, concurrency_key)
    WHERE status = 'in_progress' AND concurrency_key IS NOT NULL;
