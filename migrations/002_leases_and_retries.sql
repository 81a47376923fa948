-- Leases: who holds a task (locked_by), until when (locked_until), how many times
-- it was claimed (attempts) and how many times its worker was lost (rescues).
-- run_at lets a failed task wait out its retry backoff.
ALTER TABLE tasks
    ADD COLUMN attempts     integer     NOT NULL DEFAULT 0,
    ADD COLUMN rescues      integer     NOT NULL DEFAULT 0,
    ADD COLUMN run_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN locked_by    text,
    ADD COLUMN locked_until timestamptz;

-- The claim takes due pending tasks in (run_at, id) order.
DROP INDEX tasks_pending_idx;
CREATE INDEX tasks_claimable_idx ON tasks (run_at, id) WHERE status = 'pending';

-- Rescue looks for expired leases; heartbeats and give-backs look up a holder's
-- tasks. Both scan only the (small) in-progress set.
CREATE INDEX tasks_in_progress_idx ON tasks (locked_until) WHERE status = 'in_progress';
