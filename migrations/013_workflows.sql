-- Workflows (part 15): chains and groups with a callback, kept in the tasks
-- table and moved on by the transaction that ends a task.
--
-- workflow_id: the workflow a task belongs to (NULL: none); every task of one
-- `chain(...)` or `group(...)` enqueue shares it (taskworker_workflow_ids).
-- next_ids: the tasks this one's result goes to (a chain's next step, a group
-- callback, the members of a group that follows it in a chain); NULL for a
-- task outside a workflow and for a workflow's last tasks.
--
-- A task that waits for others is in status 'waiting', which no claim takes
-- (every claim reads status = 'pending'), with a row in taskworker_waits:
-- parents_left, the tasks it still waits for, and joins, whether it receives
-- the list of its parents' results (after a group) or its one parent's result
-- (a chain step). When parents_left reaches 0 it becomes 'pending', its
-- arguments' first positional argument the result(s). Constant defaults and
-- NULL columns: added without rewriting the table.
ALTER TABLE tasks
    ADD COLUMN workflow_id bigint,
    ADD COLUMN next_ids    bigint[];

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
    parents_left integer NOT NULL,
    joins        boolean NOT NULL
);

-- A task of a workflow ended (done, error or cancelled), or a waiting task
-- ended without running (cancelled). This runs in the transaction that ended
-- it, after the statement that did: a fenced outcome that landed, a rescue that
-- parks a task, `taskworker cancel`. So a next step is released only by the
-- write that landed, exactly once (a waiting row becomes pending once; its
-- parents' ends are counted under the row lock of its taskworker_waits row, so
-- of several transactions ending a group's last members at the same moment,
-- the last to commit sees the count reach 0), and a process killed before its
-- commit released nothing, since it ended nothing.
--
-- done: each child counts one parent fewer; a child with none left becomes
-- pending with the result(s) put first in its positional arguments (a join:
-- the list of its parents' results, in the order they were given; read through
-- tasks_workflow_idx), and the fetchers are woken.
-- error or cancelled: the tasks below it that still wait can never run: they
-- end cancelled, their error naming this task.
--
-- Logic in a trigger, against the rule "SQL in queries.sql": the same release
-- would otherwise be repeated in every statement that ends a task (three
-- outcome statements, the rescue, cancel, the dashboard's actions), and a path
-- that forgot it would leave a workflow waiting for ever. The WHEN condition
-- is read before the function is called: a task outside a workflow (next_ids
-- NULL, never waiting) costs the outcome path one test per row.
CREATE FUNCTION taskworker_workflow_step() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    child record;
    given jsonb;
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
    FOR child IN
        UPDATE taskworker_waits SET parents_left = parents_left - 1
        WHERE task_id = ANY(NEW.next_ids)
        RETURNING task_id, parents_left, joins
    LOOP
        CONTINUE WHEN child.parents_left > 0;
        IF child.joins THEN
            SELECT coalesce(jsonb_agg(coalesce(p.return_value, to_jsonb(p.result))
                                      ORDER BY p.id), '[]')
            INTO given
            FROM tasks AS p
            WHERE p.workflow_id = NEW.workflow_id AND p.next_ids @> ARRAY[child.task_id];
        ELSE
            given := coalesce(NEW.return_value, to_jsonb(NEW.result), 'null');
        END IF;
        UPDATE tasks
        SET status = 'pending', run_at = greatest(run_at, now()), updated_at = now(),
            arguments = jsonb_set(arguments, '{args}',
                                  jsonb_build_array(given) || (arguments -> 'args'))
        WHERE id = child.task_id AND status = 'waiting';
        DELETE FROM taskworker_waits WHERE task_id = child.task_id;
        PERFORM pg_notify('taskworker_tasks', '');
    END LOOP;
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
