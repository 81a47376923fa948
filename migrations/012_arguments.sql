-- Tasks called like Python functions (part 14).
--
-- format: how a row is to be run. 1: the text `payload` goes to the handler as
-- one argument (every row before this migration, the seed's, a plain SQL
-- insert's). 2: `arguments` holds the call, {"args": [...], "kwargs": {...}},
-- and the function's return value is stored as JSON in `return_value`. A
-- process claims only the formats it knows (the claim filters on it), so a row
-- written in a later format waits for a process that knows it instead of being
-- handed to a text handler or the demo.
--
-- traceback: the formatted traceback of the failure that `error` describes
-- (bounded by the worker; NULL for a failure that has none, such as a timeout
-- seen from outside or a payload refused unrun).
--
-- awaited: someone waits for this task's outcome (`taskworker.wait` sets it);
-- only such rows send a notification when they finish, so the no-op path sends
-- none. Constant defaults: every column is added without rewriting the table.
ALTER TABLE tasks
    ADD COLUMN format       smallint NOT NULL DEFAULT 1,
    ADD COLUMN arguments    jsonb,
    ADD COLUMN return_value jsonb,
    ADD COLUMN traceback    text,
    ADD COLUMN awaited      boolean NOT NULL DEFAULT false;

-- Versions before this one know nothing of `format`: their claim would take a
-- row with arguments and hand its (NULL) payload to a text handler. They are
-- told apart by what their claim writes: every version since migration 010
-- raises `fence`, and those before it do not. Such a claim of a row of a later
-- format is dropped here (the row stays pending, for a process that knows it).
-- The condition is checked before the function runs: for a text row, `OLD.format
-- > 1` is false at once, and the busy path calls no function. (A process of a
-- commit between migration 010 and this one raises `fence` without knowing
-- `format`: it is not told apart, and must not run beside this version. The
-- version before it, git 5c69215, stops at migration 009.)
--
-- An old claim by name of a task with max_running takes the row's concurrency
-- slot in the same statement (taskworker_slots, leased to the claimer): the
-- function gives back the slot of a row whose claim it drops. Without that, the
-- slot stayed leased for LEASE_SECONDS to a process that holds nothing, at
-- every claim of an old process, and the limit left no room for the new
-- processes that can run the task.
--
-- What no trigger can mend (the old statements are what they are), for the
-- length of the deploy: an old claim's share counts the rows it picked and had
-- dropped, so an old process takes fewer rows, and none from a queue whose
-- first rows in its claim's order are all of later formats, until a new process
-- takes them; and a row of a later format flagged to run alone (its worker lost
-- MAX_RESCUES times) keeps an old process's alone_waiting true, so that it
-- drains every second and claims nothing alone, until a new process runs it.
-- tests/test_rolling_deploy.py sends 5c69215's claims, and runs its serve,
-- against this.
CREATE FUNCTION taskworker_keep_format() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- (That claim updates a limited row only once its slot's update has returned
    -- it: the slot's new row is visible here.)
    UPDATE taskworker_slots
    SET task_id = NULL, locked_by = NULL, locked_until = NULL
    WHERE task = OLD.task AND task_id = OLD.id AND locked_by = NEW.locked_by;
    RETURN NULL;  -- skip this row's update
END;
$$;

CREATE TRIGGER tasks_keep_format
    BEFORE UPDATE ON tasks
    FOR EACH ROW
    WHEN (OLD.format > 1 AND OLD.status = 'pending' AND NEW.status = 'in_progress'
          AND NEW.fence = OLD.fence)
    EXECUTE FUNCTION taskworker_keep_format();

-- A task someone waits for has finished: tell the waiters (payload: its id), at
-- the commit of whatever finished it (an outcome, `taskworker cancel`, a rescue
-- that parks it).
CREATE FUNCTION taskworker_notify_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskworker_finished', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_finished
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN (NEW.awaited AND NEW.status IN ('done', 'error', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskworker_notify_finished();
