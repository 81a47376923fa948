-- The fencing token of a hold: every claim raises `fence` by one, and nothing
-- else ever changes it (a give back, a rescue, `taskworker retry` leave it
-- alone). Every write a holder makes to its task (the outcome, a lease renewal,
-- a payload load, freeing its concurrency slot) names the (id, fence) of its
-- hold, so a write of an earlier hold can never be taken for a later one's, even
-- when the same process claims the task again. `attempts` stays the count users
-- see (a task given back does not count the attempt): it was the token before,
-- and give backs lowering it let a second hold repeat the first one's token.
-- A constant default: added without rewriting the table.
ALTER TABLE tasks ADD COLUMN fence bigint NOT NULL DEFAULT 0;
