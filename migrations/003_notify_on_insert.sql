-- Wake idle workers on any insert (taskworker's own enqueue, psql, an application's
-- plain INSERT). A statement-level trigger sends one notification per statement,
-- so a bulk insert of a million rows sends one, not a million.
CREATE FUNCTION taskworker_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskworker_tasks', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_notify_insert
    AFTER INSERT ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION taskworker_notify_insert();
