-- Workflows (part 15): chains and groups with a callback, kept in the tasks
-- table and moved on by the transaction that ends a task.
--
-- workflow_id: the workflow a task belongs to (NULL: none); every task of one
-- `chain(...)` or `group(...)` enqueue shares it (taskworker_workflow_ids).
-- next_ids: the tasks this one's result goes to (a chain's next step, a group
-- callback, the members of a group that follows it in a chain); NULL for a
-- task outside a workflow and for a workflow's last tasks. next_joins: those
-- tasks join it with others (it is a group's member: they receive the list of
-- the group's results), so its end is counted (see below).
--
-- A task that waits for others is in status 'waiting', which no claim takes
-- (every claim reads status = 'pending'), with a row in taskworker_waits:
-- parents_left, the tasks it still waits for. When they are done it becomes
-- 'pending', its first positional argument their result (a chain step's one
-- parent), or the list of their results (a group's callback). NULL columns:
-- added without rewriting the table.
ALTER TABLE tasks
    ADD COLUMN workflow_id bigint,
    ADD COLUMN next_ids    bigint[],
    ADD COLUMN next_joins  boolean;

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'in_progress', 'done', 'error', 'cancelled', 'waiting'))
    NOT VALID;

CREATE SEQUENCE taskworker_workflow_ids AS bigint;

-- One row per waiting task; deleted when it is released or cancelled. A
-- narrow row of its own: a group's members all count down the callback's,
-- which would otherwise be a wide tasks row rewritten once per member.
CREATE TABLE taskworker_waits (
    task_id      bigint PRIMARY KEY,
    parents_left integer NOT NULL
);

-- A task of a workflow ended (done, error or cancelled), or a waiting task
-- ended without running (cancelled). These triggers run in the transaction
-- that ended it, at the end of the statement that did: a fenced outcome that
-- landed, a rescue that parks a task, `taskworker cancel`. So a next step is
-- released only by the write that landed, exactly once (a waiting row becomes
-- pending once), and a process killed before its commit released nothing,
-- since it ended nothing.
--
-- done, a task whose children each wait for it alone (chain steps, or the
-- members of a group that follows it): they become pending at once, its result
-- put first in their positional arguments.
-- done, a group member (its child joins several parents): the members the
-- transaction ended are counted in a setting per child (taskworker.ended_<id>);
-- the first of them touches the child's taskworker_waits row, which takes its
-- lock and queues taskworker_workflow_joined for the commit, after every row:
-- it counts parents_left down by as many as the transaction ended. Of several
-- transactions ending a group's last members at the same moment, the last to
-- commit sees the count reach 0 and releases the callback with the list of its
-- parents' results (in the order they were given, read through
-- tasks_workflow_idx). Counting once per transaction, not per row: a row
-- rewritten by every member of a batch in one transaction is a chain of row
-- versions each update walks (it halved a group's speed). (Two transactions
-- ending members of the same two groups each, in opposite orders, can
-- deadlock on the two rows: the server aborts one, and its statement is sent
-- again, as any statement the server refuses.)
-- error or cancelled: the tasks below it that still wait can never run: they
-- end cancelled, their error naming this task.
--
-- Logic in triggers, against the rule "SQL in queries.sql": the same release
-- would otherwise be repeated in every statement that ends a task (three
-- outcome statements, the rescue, cancel, the dashboard's actions), and a path
-- that forgot it would leave a workflow waiting for ever. The WHEN conditions
-- are read before a function is called: a task outside a workflow (next_ids
-- NULL, never waiting) costs the outcome path one test per row.
CREATE FUNCTION taskworker_workflow_step() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    child bigint;
    setting text;
    ended integer;
BEGIN
    IF OLD.status = 'waiting' THEN
        DELETE FROM taskworker_waits WHERE task_id = NEW.id;
    END IF;
    IF NEW.next_ids IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.status <> 'done' THEN
        WITH RECURSIVE below(id) AS (
            SELECT unnest(NEW.next_ids)
          UNION
            SELECT unnest(t.next_ids) FROM tasks AS t JOIN below AS b ON t.id = b.id
            WHERE t.status = 'waiting'
        )
        UPDATE tasks
        SET status = 'cancelled', updated_at = now(),
            error = format('cancelled: task %s, whose result it waits for, ended in %s',
                           NEW.id, NEW.status)
        WHERE id IN (SELECT id FROM below) AND status = 'waiting';
        RETURN NULL;
    END IF;
    IF NEW.next_joins THEN  -- counted at the commit
        FOREACH child IN ARRAY NEW.next_ids LOOP
            setting := 'taskworker.ended_' || child;
            ended := coalesce(nullif(current_setting(setting, true), ''), '0')::integer;
            PERFORM set_config(setting, (ended + 1)::text, true);
            IF ended = 0 THEN  -- the first: its count is taken at the commit
                UPDATE taskworker_waits SET parents_left = parents_left WHERE task_id = child;
            END IF;
        END LOOP;
        RETURN NULL;
    END IF;
    UPDATE tasks
    SET status = 'pending', run_at = greatest(run_at, now()), updated_at = now(),
        arguments = jsonb_set(arguments, '{args}',
                              jsonb_build_array(coalesce(NEW.return_value,
                                                         to_jsonb(NEW.result), 'null'))
                              || (arguments -> 'args'))
    WHERE id = ANY(NEW.next_ids) AND status = 'waiting';
    IF FOUND THEN
        DELETE FROM taskworker_waits WHERE task_id = ANY(NEW.next_ids);
        PERFORM pg_notify('taskworker_tasks', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_workflow_step
    AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN ((NEW.next_ids IS NOT NULL OR OLD.status = 'waiting')
          AND NEW.status IN ('done', 'error', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskworker_workflow_step();

-- The members of group `task_id` this transaction ended (the setting
-- taskworker.ended_<task_id>, counted by taskworker_workflow_step, which
-- touched this row at the first of them), counted down at its commit: run once
-- per transaction and waiting task, after every row of its statements. A
-- callback with no parent left is released.
CREATE FUNCTION taskworker_workflow_joined() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    setting text := 'taskworker.ended_' || NEW.task_id;
    ended integer := coalesce(nullif(current_setting(setting, true), ''), '0')::integer;
    left_now integer;
    given jsonb;
BEGIN
    IF ended = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM set_config(setting, '0', true);
    UPDATE taskworker_waits SET parents_left = parents_left - ended
    WHERE task_id = NEW.task_id
    RETURNING parents_left INTO left_now;
    IF left_now IS NULL OR left_now > 0 THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(jsonb_agg(r.value), '[]') INTO given  -- (in the index's order: no sort)
    FROM (SELECT coalesce(p.return_value, to_jsonb(p.result)) AS value
          FROM tasks AS p
          WHERE p.workflow_id = (SELECT workflow_id FROM tasks WHERE id = NEW.task_id)
            AND p.next_ids @> ARRAY[NEW.task_id]
          ORDER BY p.id) AS r;
    UPDATE tasks
    SET status = 'pending', run_at = greatest(run_at, now()), updated_at = now(),
        arguments = jsonb_set(arguments, '{args}', jsonb_build_array(given) || (arguments -> 'args'))
    WHERE id = NEW.task_id AND status = 'waiting';
    DELETE FROM taskworker_waits WHERE task_id = NEW.task_id;
    PERFORM pg_notify('taskworker_tasks', '');
    RETURN NULL;
END;
$$;

-- Fired by the touch (parents_left unchanged), not by the count itself.
CREATE CONSTRAINT TRIGGER taskworker_waits_joined
    AFTER UPDATE ON taskworker_waits
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.parents_left = NEW.parents_left)
    EXECUTE FUNCTION taskworker_workflow_joined();
