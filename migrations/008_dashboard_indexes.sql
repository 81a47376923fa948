-- taskworker: no transaction
-- Part 8: what the dashboard searches and charts, without scanning the table.
--
-- Both indexes are partial, over finished tasks only: a claim (pending ->
-- in_progress) writes a row version that enters neither, so the hot path pays
-- nothing for them; a task enters them once, when it finishes. Built
-- CONCURRENTLY, like 007: serving goes on while a large table is indexed.
--
-- pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may
-- create it without being a superuser.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Text search in payload or error (ILIKE '%words%'), over the first 1,000
-- characters of each: a 1 MB payload would otherwise add tens of thousands of
-- trigrams at its completion. The dashboard's statement uses the same expression.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_finished_text_idx
    ON tasks USING gin ((left(coalesce(payload, ''), 1000) || ' ' || left(coalesce(error, ''), 1000))
                        gin_trgm_ops)
    WHERE status IN ('done', 'error', 'cancelled');

-- Tasks finished per minute over the last hour (the overview's chart) read the
-- last hour's rows only.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_finished_at_idx
    ON tasks (updated_at) WHERE status IN ('done', 'error', 'cancelled');
