-- taskworker: no transaction
-- Part 8: what the dashboard searches and charts, without making the hot path
-- pay for it.
--
-- Text search lives in a side table, taskworker_search, which the dashboard's
-- indexer fills in the background from finished tasks (their text is final until
-- a retry, which finishes them again later): a trigram index ON tasks would make
-- every completion insert the row's trigrams inside the completer's UPDATE (it
-- cost two thirds of the no-op throughput on 400-character JSON payloads). No index on tasks
-- uses GIN; tests/test_dashboard_search.py checks it.
--
-- Indexes are built CONCURRENTLY, like 007: serving goes on while a large table
-- is indexed. Every statement may run again (a migrate interrupted half way).
--
-- pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may
-- create it without being a superuser.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Finished tasks by (updated_at, id): the overview's chart (tasks finished per
-- minute over the last hour) and the search indexer's keyset (one statement can
-- finish thousands of rows with the same now(), so updated_at alone would not
-- do). Partial: a claim writes a row version that does not enter it; a task
-- enters it once per completion.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_finished_at_idx
    ON tasks (updated_at, id) WHERE status IN ('done', 'error', 'cancelled');

-- The words searched of each finished task the indexer has reached: the first
-- 1,000 characters of its payload and of its error (a 1 MB payload would
-- otherwise add tens of thousands of trigrams), as of its last completion.
CREATE TABLE IF NOT EXISTS taskworker_search (
    task_id bigint PRIMARY KEY,
    words text NOT NULL,
    finished_at timestamptz NOT NULL
);

CREATE INDEX CONCURRENTLY IF NOT EXISTS taskworker_search_words_idx
    ON taskworker_search USING gin (words gin_trgm_ops);

-- How far the indexer has got (one row): every finished task at or before
-- (indexed_at, indexed_id) in (updated_at, id) order has its words in
-- taskworker_search; `watermark` is the updated_at below which every task is
-- committed (store/search.py explains why the next pass may go up to it).
CREATE TABLE IF NOT EXISTS taskworker_search_progress (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    indexed_at timestamptz NOT NULL,
    indexed_id bigint NOT NULL,
    watermark timestamptz NOT NULL,
    passed_at timestamptz
);

INSERT INTO taskworker_search_progress (indexed_at, indexed_id, watermark)
VALUES ('-infinity', 0, '-infinity')
ON CONFLICT DO NOTHING;
