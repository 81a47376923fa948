-- 20 sample pending tasks, as in the original Concurrent Task Processor.
-- Usage: psql "$DATABASE_URL" -f seed/seed_tasks.sql   (or: taskworker seed)
INSERT INTO tasks (payload)
SELECT 'Test task ' || n FROM generate_series(1, 20) AS n;
