-- A task's fencing token starts at a random value instead of 0. A failover to
-- an asynchronous replica can lose the last tasks enqueued on the old primary,
-- and the new primary's sequence then hands their ids to new tasks: with every
-- fence starting at 0, a new task's first claim had the same (id, fence) as the
-- lost task's, and a process still holding the lost task could write its outcome
-- onto the new one (seen once in 25 runs of tests/test_failover.py). Started
-- anywhere in [0, 2^52), two tasks that share an id share no fence but by a
-- chance of one in 2^52 per claim. Rows already there keep theirs; every claim
-- still raises it by one and nothing else changes it.
ALTER TABLE tasks ALTER COLUMN fence SET DEFAULT floor(random() * 4503599627370496)::bigint;
