-- taskworker: no transaction
-- The dashboard's text search by ranges of task ids. One trigram index over the
-- whole side table (008) lists every match of a pattern before the newest can be
-- picked: with 10,000,000 finished tasks a word in one task of 350 (an error
-- message filtered by status) took half a second, each match rechecked against
-- its task, and a filter that left none of them (a queue) read them all. This
-- index leads with the range of 2^18 ids a task falls in (task_id >> 18), so a
-- search reads one range at a time, newest first, and stops when its page is
-- full (queries.sql, dash_tasks_text_finished): its cost is that of the ranges
-- it reads. btree_gin lets a GIN index hold the range beside the trigrams; like
-- pg_trgm it is a trusted extension (PostgreSQL 13+) that the database's owner
-- may create. The index is built CONCURRENTLY (two minutes for 10,000,000 side
-- rows here: the dashboard and serve go on meanwhile), then 008's index, which no
-- statement uses any more, is dropped; each statement may run again after an
-- interrupted run.
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE INDEX CONCURRENTLY IF NOT EXISTS taskworker_search_range_words_idx
    ON taskworker_search USING gin ((task_id >> 18), words gin_trgm_ops);

DROP INDEX CONCURRENTLY IF EXISTS taskworker_search_words_idx;
