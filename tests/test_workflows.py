"""Workflows (part 15): chains and groups with a callback, run by real `serve`
processes against a real PostgreSQL, kill -9 included.

What each test watches is in the table: every release of a waiting task
(waiting -> pending) is recorded by an audit trigger of the test's own, so
"the callback was enqueued once" is counted by the database, not inferred from
logs. The application module is written into serve's working folder and
loaded by the test too, as test_calls.py does.
"""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from dashboard_client import running_dashboard
from invariants import FAST, query, wait_until
from proc import cli
from test_calls import load_app

import taskworker

APP = '''
import os
import time

import taskworker


@taskworker.task("add")
def add(x, y=0):
    return x + y


@taskworker.task("total")
def total(values, extra=0):
    return sum(values) + extra


@taskworker.task("boom")
def boom(x):
    raise ValueError(f"boom {x}")


@taskworker.task("gated")
def gated(n, gate):
    """Returns once the file `gate` exists: the test decides when it ends."""
    while not os.path.exists(gate):
        time.sleep(0.01)
    return {"n": n, "pid": os.getpid()}


@taskworker.task("collect")
def collect(values):
    return {"sum": sum(v["n"] for v in values), "count": len(values),
            "pids": sorted({v["pid"] for v in values})}
'''

RELEASES = """
CREATE TABLE releases (task_id bigint, at timestamptz);
CREATE FUNCTION record_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO releases VALUES (NEW.id, clock_timestamp());
    RETURN NULL;
END $$;
CREATE TRIGGER record_release AFTER UPDATE ON tasks FOR EACH ROW
    WHEN (OLD.status = 'waiting' AND NEW.status = 'pending')
    EXECUTE FUNCTION record_release();
"""


def releases(db: Any, task_id: int) -> int:
    return query(db, "SELECT count(*) FROM releases WHERE task_id = %s", (task_id,))[0][0]


def statuses(db: Any, ids: list[int]) -> list[str]:
    rows = dict(query(db, "SELECT id, status FROM tasks WHERE id = ANY(%s)", (ids,)))
    return [rows[i] for i in ids]


def waiter(db_url: str) -> Any:
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    return conn


def test_a_chain_passes_each_result_on_and_is_enqueued_whole_or_not_at_all(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path, APP)
    before = query(db, "SELECT count(*) FROM tasks")[0][0]
    refused = [
        (lambda: taskworker.chain(app.add.s(1, 2), app.add.s(3, 4)), TypeError,
         "too many positional arguments"),  # the step gets the result first
        (lambda: taskworker.chain(app.add.s(1), app.add.options(unique_key="k").s()),
         ValueError, "cannot have a unique_key"),
        (lambda: taskworker.group(), TypeError, "at least one"),
        (lambda: taskworker.chain(app.add.s(1), "add"), TypeError, "not str"),
    ]
    for make, error, message in refused:
        with pytest.raises(error, match=message):
            make().enqueue(db)
    # Rolled back with the application's transaction: no task, no wait row.
    conn = psycopg2.connect(db_url)
    try:
        with pytest.raises(RuntimeError), conn:
            taskworker.chain(app.add.s(1), app.add.s()).enqueue(conn)
            raise RuntimeError("the application's transaction fails")
    finally:
        conn.close()
    assert query(db, "SELECT count(*) FROM tasks")[0][0] == before
    assert query(db, "SELECT count(*) FROM taskworker_waits")[0][0] == 0

    flow = taskworker.chain(app.add.s(1, 2), app.add.s(10),
                            taskworker.group(app.add.s(100), app.add.s(1000)),
                            app.total.s(extra=1))
    with psycopg2.connect(db_url) as conn:
        run = flow.enqueue(conn)
    conn.close()
    assert len(run.task_ids) == 5 and run.last == [run.task_ids[-1]]
    assert statuses(db, run.task_ids) == ["pending"] + ["waiting"] * 4
    serve(db_url, env=FAST, args=args)
    w = waiter(db_url)
    try:
        assert taskworker.wait(w, run.last[0], timeout=30) == 3 + 10 + 100 + 3 + 10 + 1000 + 1
    finally:
        w.close()
    calls = [row[0] for row in query(
        db, "SELECT arguments FROM tasks WHERE id = ANY(%s) ORDER BY id", (run.task_ids,))]
    assert calls == [{"args": [1, 2], "kwargs": {}}, {"args": [3, 10], "kwargs": {}},
                     {"args": [13, 100], "kwargs": {}}, {"args": [13, 1000], "kwargs": {}},
                     {"args": [[113, 1013]], "kwargs": {"extra": 1}}]
    assert query(db, "SELECT count(*) FROM taskworker_waits")[0][0] == 0


def test_a_group_callback_is_enqueued_once_when_three_processes_end_members_together(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path, APP)
    query(db, RELEASES)
    gate = str(tmp_path / "gate")
    members = 60
    with psycopg2.connect(db_url) as conn:
        run = taskworker.group(*(app.gated.s(n, gate) for n in range(members))).then(
            app.collect.s()).enqueue(conn)
    conn.close()
    callback = run.last[0]
    env = {**FAST, "WORKER_COUNT": "20"}  # (FETCH_LIMIT unset: no more than its idle workers)
    procs = [serve(db_url, env=env, args=args) for _ in range(3)]
    # Every member is held by a worker, none has ended: then they all end at once.
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE workflow_id = %s AND "
                                 "status = 'in_progress' AND started_at IS NOT NULL",
                             (run.id,))[0][0] == members, 30,
               "every member running", procs)
    assert statuses(db, [callback]) == ["waiting"]
    Path(gate).touch()
    w = waiter(db_url)
    try:
        value = taskworker.wait(w, callback, timeout=30)
    finally:
        w.close()
    assert value["count"] == members and value["sum"] == sum(range(members))
    assert len(value["pids"]) == 3, value  # each process ended some of them
    assert {p.pid for p in procs} == set(value["pids"])
    assert releases(db, callback) == 1
    [(late,)] = query(db, """
        SELECT extract(epoch FROM (SELECT at FROM releases WHERE task_id = %s)
                                  - (SELECT max(updated_at) FROM tasks WHERE id = ANY(%s)))""",
                      (callback, run.task_ids[:-1]))
    assert late < 1.0  # released by the last member's own transaction


def test_kill_9_of_the_process_ending_the_last_member_enqueues_the_callback_once(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path, APP)
    query(db, RELEASES)
    gate = str(tmp_path / "gate")
    with psycopg2.connect(db_url) as conn:
        run = taskworker.group(*(app.gated.s(n, gate) for n in range(5))).then(
            app.collect.s()).enqueue(conn)
    conn.close()
    last, callback = run.task_ids[-2], run.last[0]
    # The last member's outcome statement stalls inside its transaction, and
    # the server gives up a statement whose client is gone (instead of running
    # it to its commit): kill -9 lands with the member ended in a transaction
    # that never commits.
    query(db, f"""
        CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
        CREATE TRIGGER stall BEFORE UPDATE ON tasks FOR EACH ROW
            WHEN (NEW.id = {last} AND NEW.status = 'done') EXECUTE FUNCTION stall();
        ALTER DATABASE "{db.info.dbname}" SET client_connection_check_interval = '100ms'
    """)
    Path(gate).touch()
    # The other members end first; then the last one is due.
    query(db, "UPDATE tasks SET run_at = now() + interval '1 hour' WHERE id = %s", (last,))
    victim = serve(db_url, env=FAST, args=args)
    wait_until(lambda: statuses(db, run.task_ids[:-2]) == ["done"] * 4, 30,
               "the first four members done")
    assert releases(db, callback) == 0
    query(db, "UPDATE tasks SET run_at = now() WHERE id = %s", (last,))
    wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                 "datname = current_database() AND wait_event = 'PgSleep'"
                             )[0][0], 30, "the last member's outcome stalled in its transaction")
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    query(db, "DROP TRIGGER stall ON tasks")
    wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                 "wait_event = 'PgSleep'")[0][0] == 0, 30,
               "the killed process's statement given up")
    assert statuses(db, [last, callback]) == ["in_progress", "waiting"]
    assert releases(db, callback) == 0
    serve(db_url, env=FAST, args=args)  # rescues the last member once its lease runs out
    w = waiter(db_url)
    try:
        value = taskworker.wait(w, callback, timeout=60)
    finally:
        w.close()
    assert value["sum"] == 0 + 1 + 2 + 3 + 4 and value["count"] == 5
    assert releases(db, callback) == 1
    # Ended by the second process, after a rescue (charged or not: its start may
    # have been written only by the outcome the kill rolled back).
    assert query(db, "SELECT status, rescues + unstarted_rescues FROM tasks WHERE id = %s",
                 (last,))[0] == ("done", 1)


def test_a_failed_member_cancels_the_callback_and_cancelling_a_workflow_stops_what_has_not_started(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path, APP)
    gate = str(tmp_path / "never")
    with psycopg2.connect(db_url) as conn:
        fan = taskworker.group(app.add.s(1), app.boom.s(2), app.add.s(3)).then(
            app.total.s()).enqueue(conn)
        line = taskworker.chain(app.boom.s(1), app.add.s(2), app.add.s(3)).enqueue(conn)
        held = taskworker.chain(app.gated.s(1, gate), app.add.s(2), app.add.s(3)).enqueue(conn)
        side = taskworker.chain(app.add.s(1), app.add.s(2), app.add.s(3)).enqueue(conn)
    conn.close()
    # A step cancelled by id takes what waits for it along, before anything runs.
    code, out, err = cli(db_url, "cancel", str(side.task_ids[1]))
    assert code == 0 and f"Task {side.task_ids[1]}: cancelled" in out, (out, err)
    assert statuses(db, side.task_ids) == ["pending", "cancelled", "cancelled"]
    serve(db_url, env=FAST, args=args)
    wait_until(lambda: statuses(db, fan.task_ids) == ["done", "error", "done", "cancelled"],
               30, lambda: f"the group's ends: {statuses(db, fan.task_ids)}")
    boom_id = fan.task_ids[1]
    [(error,)] = query(db, "SELECT error FROM tasks WHERE id = %s", (fan.last[0],))
    assert error == f"cancelled: task {boom_id}, whose result it waits for, ended in error"
    wait_until(lambda: statuses(db, line.task_ids) == ["error", "cancelled", "cancelled"], 30,
               "the chain after its failed step")
    # The workflow whose first step runs: cancelled whole, its runner stopped.
    wait_until(lambda: query(db, "SELECT started_at IS NOT NULL FROM tasks WHERE id = %s",
                             (held.task_ids[0],))[0][0], 30, "the gated step running")
    code, out, err = cli(db_url, "cancel", "--workflow", str(held.id))
    assert code == 0, (out, err)
    assert "cancelled 2 tasks; asked the processes of 1 task running to stop them" in out
    assert statuses(db, held.task_ids[1:]) == ["cancelled", "cancelled"]
    wait_until(lambda: statuses(db, held.task_ids[:1]) == ["cancelled"], 30,
               "the running step stopped")
    assert statuses(db, side.task_ids[:1]) == ["done"]
    code, out, err = cli(db_url, "cancel", "--workflow", str(held.id))
    assert code == 1 and "has ended (cancelled)" in err
    code, out, err = cli(db_url, "status", "--workflow", str(fan.id), "--json")
    assert code == 0 and json.loads(out)["state"] == "failed"
    assert json.loads(out)["counts"] == {"done": 2, "error": 1, "cancelled": 1}


def test_show_status_and_the_dashboard_show_a_tasks_place_in_its_workflow(
        db_url: str, db: Any, tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path, APP)
    with psycopg2.connect(db_url) as conn:
        run = taskworker.group(*(app.add.s(n) for n in range(3))).then(
            app.total.s()).enqueue(conn)
        other = taskworker.chain(app.add.s(1), app.add.s()).enqueue(conn)
    conn.close()
    first, callback = run.task_ids[0], run.last[0]
    query(db, "UPDATE tasks SET status = 'done', return_value = '0' WHERE id = %s", (first,))
    code, out, _ = cli(db_url, "show", str(callback))
    assert code == 0
    assert f"workflow {run.id}: running (1 done, 2 pending, 1 waiting" in out
    assert (f"parents: waits for 3 tasks (1 done, 2 pending, 2 not done yet): "
            f"{first} (add, done)") in out
    assert "children: none (its result is the workflow's)" in out
    code, out, _ = cli(db_url, "show", str(first))
    assert f"children: its result goes to {callback} (total, waiting)" in out
    code, out, _ = cli(db_url, "show", "--json", str(callback))
    shown = json.loads(out)["workflow"]
    assert shown["waiting_for"] == 2 and shown["state"] == "running"
    code, out, _ = cli(db_url, "status", "--workflow", str(run.id))
    assert code == 0 and f"Workflow {run.id}: running" in out
    assert re.search(r"^waiting +1$", out, re.M), out
    code, out, _ = cli(db_url, "status")
    assert re.search(r"^waiting +2$", out, re.M), out  # the callback and the other's step
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        page = c.get(f"/tasks/{callback}")
        assert page.status == 200
        assert f'href="/tasks?workflow={run.id}"' in page.body
        assert "Waits for 3 tasks (2 not done yet)" in " ".join(page.text.split())
        assert f'href="/tasks/{first}" class="task-parent"' in page.body
        page = c.get(f"/tasks/{first}")
        assert f'href="/tasks/{callback}" class="task-child"' in page.body
        listed = c.get(f"/tasks?workflow={run.id}")
        ids = [int(i) for i in re.findall(r'<tr data-id="(\d+)">', listed.body)]
        assert ids == sorted(run.task_ids, reverse=True)
        assert c.get(f"/tasks?workflow={other.id}&status=waiting").body.count("<tr data-id") == 1
