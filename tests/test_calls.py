"""Tasks called like Python functions (part 14): arguments checked at enqueue,
the function called with them by a real `serve`, its JSON return value waited
for, tracebacks stored and logged, and text payloads unchanged beside them.

The application module is written into serve's working folder and loaded by
serve with `--tasks app`; the test process loads the same file to enqueue
through the decorated functions, as an application would.
"""
from __future__ import annotations

import importlib.util
import json
import re
import signal
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import psycopg2
import pytest
from invariants import FAST, query, wait_until
from proc import cli

import taskworker

APP = '''
import os
import time

import taskworker


@taskworker.task("send_email", max_retries=3, retry_backoff=0)
def send_email(to, subject="", *, cc=None):
    ctx = taskworker.current_task()
    return {"to": to, "subject": subject, "cc": cc, "task_id": ctx.id,
            "attempt": ctx.attempt, "name": ctx.name}


@taskworker.task("tagged")
def tagged(task, n=1):  # a parameter of its own called task: the caller's
    return [task, n]


def helper(n):
    raise ValueError(f"no invoice {n}")


@taskworker.task("boom", max_retries=1, retry_backoff=0)
def boom(n):
    return helper(n)


@taskworker.task("gate")
def gate(path):
    while not os.path.exists(path):
        time.sleep(0.02)
    return "opened"


@taskworker.task("returns_a_set")
def returns_a_set():
    return {1, 2}


@taskworker.task("waits_inside")
def waits_inside(other):
    import psycopg2
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    return taskworker.wait(conn, other, timeout=5)


@taskworker.task("text_style")
def text_style(payload, task):
    return f"{payload} by {task.name}"


@taskworker.task("tick", every="1s", kwargs={"region": "eu"})
def tick(region):
    return {"region": region}
'''


def load_app(tmp_path: Path, text: str = APP) -> tuple[ModuleType, list[str]]:
    """Write `text` as app.py into serve's folder and import it here too; the
    module and the serve arguments that load it."""
    path = tmp_path / "cwd" / "app.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ["--tasks", "app"]


def columns(db: Any, task_id: int, *names: str) -> dict[str, Any]:
    row = query(db, f"SELECT {', '.join(names)} FROM tasks WHERE id = %s", (task_id,))[0]
    return dict(zip(names, row, strict=True))


def count(db: Any) -> int:
    return query(db, "SELECT count(*) FROM tasks")[0][0]


def test_a_call_runs_with_its_arguments_and_its_return_value_is_waited_for(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path)
    with psycopg2.connect(db_url) as conn:  # a transaction of the application's
        task_id = app.send_email.enqueue(conn, "ann@example.com", subject="Hi")
        later = app.send_email.options(priority=5, queue="default").enqueue(
            conn, "bob@example.com", cc="boss@example.com")
        texty = taskworker.enqueue(conn, "hello", task=app.text_style)
        mine = app.tagged.enqueue(conn, task="my own", n=2)
    row = columns(db, task_id, "format", "arguments", "payload", "status")
    assert row == {"format": 2, "payload": None, "status": "pending",
                   "arguments": {"args": ["ann@example.com"], "kwargs": {"subject": "Hi"}}}
    assert columns(db, later, "priority")["priority"] == 5
    serve(db_url, env=FAST, args=args)
    waiter = psycopg2.connect(db_url)
    try:
        value = taskworker.wait(waiter, task_id, timeout=30)
        assert value == {"to": "ann@example.com", "subject": "Hi", "cc": None,
                         "task_id": task_id, "attempt": 1, "name": "send_email"}
        values = taskworker.wait(waiter, [later, texty, mine], timeout=30)
        assert values[0]["cc"] == "boss@example.com"
        assert values[1:] == ["hello by text_style", ["my own", 2]]
        # wait() leaves the connection as it found it: no transaction open.
        assert waiter.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert taskworker.result(waiter, task_id) == value
        # In the table, as JSON anyone can read in SQL; a text task keeps `result`.
        assert query(db, "SELECT return_value->>'to', result FROM tasks WHERE id = %s",
                     (task_id,))[0] == ("ann@example.com", None)
        assert query(db, "SELECT result, return_value FROM tasks WHERE id = %s",
                     (texty,))[0] == ("hello by text_style", None)
    finally:
        waiter.close()


def test_a_call_the_signature_or_json_refuses_raises_before_anything_is_sent(
        db: Any, tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path)
    before = count(db)
    refused = [
        (lambda: app.send_email.enqueue(db), "missing a required argument: 'to'"),
        (lambda: app.send_email.enqueue(db, "a", "b", "c"), "too many positional"),
        (lambda: app.send_email.enqueue(db, "a", bcc="x"), "unexpected keyword argument 'bcc'"),
        (lambda: app.send_email.enqueue(db, datetime.now(UTC)), "isoformat()"),
        (lambda: app.send_email.enqueue(db, date(2026, 1, 1)), "date.fromisoformat"),
        (lambda: app.send_email.enqueue(db, uuid4()), "str(value) and UUID()"),
        (lambda: app.send_email.enqueue(db, Decimal("9.99")), "Decimal() it in the task"),
        (lambda: app.send_email.enqueue(db, "a", subject=float("nan")), "nan"),
        (lambda: app.send_email.enqueue(db, {1: "x"}), "JSON object keys are strings"),
        (lambda: app.send_email.enqueue(db, {"a": {1, 2}}), "sorted list"),
        (lambda: app.send_email.enqueue(db, "nul\x00"), "NUL"),
        (lambda: app.send_email.enqueue(db, "half \ud800"), "lone surrogate"),
        (lambda: taskworker.enqueue(db, "p", task="send_email", args=["a"]), "not both"),
    ]
    for call, message in refused:
        with pytest.raises(TypeError, match=re.escape(message)):
            call()
    assert count(db) == before
    # By name, a name this process does not register: refused (it registers
    # others), unless forced; JSON is checked, the signature is the worker's.
    with pytest.raises(ValueError, match="did you mean 'send_email'"):
        taskworker.enqueue(db, task="send_emial", args=["a"])
    assert isinstance(taskworker.enqueue(db, task="elsewhere", args=[1], kwargs={"a": [2]},
                                         force=True), int)
    assert count(db) == before + 1


def test_a_call_that_no_longer_fits_fails_at_once_unretried_and_a_failure_keeps_its_traceback(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path)
    # Enqueued by an older deploy whose send_email took three arguments.
    stale = query(db, "INSERT INTO tasks (task, format, arguments) VALUES ('send_email', 2, "
                      "'{\"args\": [1, 2, 3], \"kwargs\": {}}') RETURNING id")[0][0]
    failing = app.boom.enqueue(db, 42)
    unstorable = app.returns_a_set.enqueue(db)
    inside = app.waits_inside.enqueue(db, failing)
    p = serve(db_url, env={**FAST, "LOG_LEVEL": "DEBUG"}, args=args)
    with psycopg2.connect(db_url) as waiter:
        waiter.autocommit = True
        for task_id in (stale, failing, unstorable, inside):
            with pytest.raises(taskworker.TaskFailed):
                taskworker.wait(waiter, task_id, timeout=30)
        with pytest.raises(taskworker.TaskFailed) as failed:
            taskworker.result(waiter, failing)
    row = columns(db, stale, "status", "attempts", "error")
    assert row["status"] == "error" and row["attempts"] == 1  # max_retries=3: not retried
    assert "the arguments do not fit send_email(to, subject='', *, cc=None)" in row["error"]
    assert "too many positional arguments" in row["error"]
    # The failure: its error, its traceback (the function's frames, file and
    # line), retried once (logged at DEBUG), then in error (logged as a warning).
    assert failed.value.error == "ValueError: no invoice 42"
    tb = failed.value.traceback
    assert tb is not None and tb.startswith("Traceback (most recent call last):")
    assert re.search(r'app\.py", line \d+, in boom\n', tb)
    assert re.search(r'app\.py", line \d+, in helper\n', tb)
    assert "worker.py" not in tb and tb.rstrip().endswith("ValueError: no invoice 42")
    assert columns(db, failing, "attempts")["attempts"] == 2
    out = p.output()
    mark = rf"\n\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d Task ID: {failing} \| "
    assert re.search(rf"\[Worker \d+\] Task ID: {failing} failed, to be retried: ValueError: "
                     rf"no invoice 42{mark}Traceback", out)
    logged = re.search(rf"\[Worker \d+\] Task ID: {failing} failed: ValueError: no invoice 42"
                       rf"{mark}Traceback \(most recent call last\):({mark}.*)*?"
                       rf'{mark}  File ".*app\.py", line \d+, in helper\n', out)
    assert logged, out[-3000:]
    assert "JSON cannot carry" in columns(db, unstorable, "error")["error"]
    assert "could deadlock" in columns(db, inside, "error")["error"]
    code, shown, _ = cli(db_url, "show", str(failing))
    assert code == 0 and "in helper" in shown and "ValueError: no invoice 42" in shown


def test_result_and_wait_say_what_they_cannot_give(db_url: str, db: Any,
                                                    tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path)
    task_id = app.send_email.enqueue(db, "ann@example.com")
    with pytest.raises(taskworker.NotFinished, match="not finished"):
        taskworker.result(db, task_id)
    with pytest.raises(taskworker.UnknownTask):
        taskworker.result(db, 10**12)
    with pytest.raises(taskworker.WaitTimeout, match=rf"task {task_id} not finished"):
        taskworker.wait(db, task_id, timeout=0.2)
    conn = psycopg2.connect(db_url)
    try:
        conn.cursor().execute("SELECT 1")  # a transaction is open
        with pytest.raises(RuntimeError, match="no transaction open"):
            taskworker.wait(conn, task_id, timeout=1)
    finally:
        conn.close()
    query(db, "UPDATE tasks SET status = 'cancelled', error = 'cancelled: by hand' "
              "WHERE id = %s", (task_id,))
    with pytest.raises(taskworker.TaskFailed, match="cancelled: by hand") as failed:
        taskworker.wait(db, [task_id], timeout=5)
    assert failed.value.status == "cancelled"


def waiting(db_url: str, task_ids: Any, timeout: float) -> tuple[threading.Thread,
                                                                   dict[str, Any]]:
    """taskworker.wait on a connection of its own, in a thread (started): the
    thread, and the dict that gets its "value" or its "error"."""
    outcome: dict[str, Any] = {}

    def wait_for_them() -> None:
        with psycopg2.connect(db_url) as conn:
            try:
                outcome["value"] = taskworker.wait(conn, task_ids, timeout=timeout)
            except Exception as exc:  # (reported by the caller's assertion)
                outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_them)
    waiter.start()
    return waiter, outcome


def test_only_awaited_tasks_notify_and_a_wait_outlives_a_restart_of_serve(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    app, args = load_app(tmp_path)
    listener = psycopg2.connect(db_url)
    listener.autocommit = True
    listener.cursor().execute("LISTEN taskworker_finished")
    unawaited = [app.send_email.enqueue(db, f"u{n}@example.com") for n in range(20)]
    gate_file = tmp_path / "open"
    gated = app.gate.enqueue(db, str(gate_file))
    first = serve(db_url, env={**FAST, "WORKER_COUNT": "2"}, args=args)
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND "
                                 "status = 'done'", (unawaited,))[0][0] == 20,
               30, "the tasks nobody waits for to finish", [first])
    wait_until(lambda: columns(db, gated, "started_at")["started_at"] is not None, 30,
               "the gated task to start", [first])
    waiter, outcome = waiting(db_url, gated, 60)
    wait_until(lambda: columns(db, gated, "awaited")["awaited"], 10, "the wait to mark the task")
    first.signal(signal.SIGTERM)  # the task is given back at shutdown
    assert first.wait(60) == 0
    assert columns(db, gated, "status")["status"] == "pending"
    second = serve(db_url, env=FAST, args=args)
    wait_until(lambda: columns(db, gated, "started_at")["started_at"] is not None, 30,
               "the second serve to start the gated task", [second])
    assert waiter.is_alive() and not outcome
    gate_file.write_text("")
    waiter.join(60)
    assert outcome == {"value": "opened"}

    def notified() -> list[int]:
        listener.poll()  # (this connection's copy may arrive after the waiter's)
        return [int(n.payload) for n in listener.notifies]

    wait_until(lambda: gated in notified(), 10, "the listener to hear the gated task finish")
    assert notified() == [gated]  # the twenty others, finished before it, sent nothing
    listener.close()


def test_a_wait_does_not_deadlock_with_outcomes_written_in_another_order(
        db_url: str, db: Any) -> None:
    """serve writes a batch of outcomes in the order the tasks finished, each row
    locked as it goes. A wait that marked the tasks awaited in id order, holding
    the rows it had marked while it waited for one serve held, closed a cycle
    (seen in CI: "deadlock detected" in the tutorial's wait). Here a session
    stands in for serve's statement: it holds the third task, then writes the
    first. The wait marks what is free, and the held row on its own after."""
    ids = [row[0] for row in query(db, "INSERT INTO tasks (payload, status) SELECT 'p' || n, "
                                       "'in_progress' FROM generate_series(1, 3) n RETURNING id")]
    writer = psycopg2.connect(db_url)
    try:
        with writer.cursor() as cur:
            cur.execute("UPDATE tasks SET status = 'done', result = 'r3' WHERE id = %s",
                        (ids[2],))  # (its transaction stays open: the row stays locked)
            waiter, outcome = waiting(db_url, ids, 30)
            wait_until(lambda: query(db, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                                         "USING (pid) WHERE NOT l.granted AND a.datname = "
                                         "current_database()")[0][0] > 0,
                       10, "the wait to wait for the held row")
            cur.execute("SET lock_timeout = '5s'")
            cur.execute("UPDATE tasks SET status = 'done', result = CASE id WHEN %s "
                        "THEN 'r1' ELSE 'r2' END WHERE id = ANY(%s)", (ids[0], ids[:2]))
        writer.commit()
        waiter.join(30)
    finally:
        writer.close()
    assert outcome == {"value": ["r1", "r2", "r3"]}
    assert query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND awaited",
                 (ids,))[0][0] == 2  # (the third finished before the wait could mark it)


def test_a_periodic_task_is_called_with_its_arguments(db_url: str, db: Any, serve: Any,
                                                       tmp_path: Path) -> None:
    _, args = load_app(tmp_path)
    p = serve(db_url, env=FAST, args=args)
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE task = 'tick' AND "
                                 "status = 'done'")[0][0] >= 1, 30, "a tick to run", [p])
    assert query(db, "SELECT arguments, return_value FROM tasks WHERE task = 'tick' AND "
                     "status = 'done' LIMIT 1")[0] == (
        {"args": [], "kwargs": {"region": "eu"}}, {"region": "eu"})


def test_an_import_error_in_a_task_module_names_its_file_and_line(db_url: str,
                                                                   tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "broken.py").write_text("import taskworker\n\nraise RuntimeError('no config')\n")
    (cwd / "typo.py").write_text("def f(:\n    pass\n")
    from proc import run_cli

    for module, line in (("broken", 3), ("typo", 1)):
        code, _, err = run_cli(["serve", "--tasks", module], env={"DATABASE_URL": db_url},
                               cwd=str(cwd))
        assert code != 0
        assert f"{module}.py:{line})" in err, err
        assert "Traceback" not in err


def test_eager_mode_runs_calls_at_once_or_at_the_tests_call(tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path)
    with taskworker.testing.eager():
        task_id = app.send_email.enqueue(None, "ann@example.com", subject="Hi")
        assert taskworker.result(None, task_id)["subject"] == "Hi"
        assert taskworker.wait(None, [task_id]) == [taskworker.result(None, task_id)]
        with pytest.raises(TypeError, match="missing a required argument"):
            app.send_email.enqueue(None)
        with pytest.raises(TypeError, match="isoformat"):
            app.send_email.enqueue(None, datetime.now(UTC))
        failing = app.boom.enqueue(None, 7)
        with pytest.raises(taskworker.TaskFailed) as failed:
            taskworker.result(None, failing)
        assert failed.value.error == "ValueError: no invoice 7"
        assert "in helper" in (failed.value.traceback or "")
        unstorable = app.returns_a_set.enqueue(None)
        with pytest.raises(taskworker.TaskFailed, match="JSON cannot carry"):
            taskworker.result(None, unstorable)
        texty = taskworker.enqueue(None, "hi", task="text_style")
        assert taskworker.result(None, texty) == "hi by text_style"
    with taskworker.testing.eager(defer=True) as tasks:
        later = app.tagged.enqueue(None, "t", n=3)
        with pytest.raises(taskworker.NotFinished):
            taskworker.result(None, later)
        assert tasks.run() == 1
        assert taskworker.result(None, later) == ["t", 3]
    assert taskworker.testing.active() is None


def test_eager_mode_holds_for_the_threads_a_test_client_runs_the_app_in(
        tmp_path: Path) -> None:
    """A test client runs the application in a thread of its own (FastAPI's
    TestClient): its enqueues run eagerly too, each in the thread that enqueued
    it, and the test reads their results. A thread with a block of its own sees
    only its own; once the test's block ends, no thread is eager."""
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path)
    seen: dict[str, Any] = {}

    def server() -> None:  # what the client's thread runs: a route that enqueues
        seen["id"] = app.send_email.enqueue(None, "bob@example.com", subject="Yo")
        seen["thread"] = threading.get_ident()

    def own_block(outer: Any) -> None:
        with taskworker.testing.eager(defer=True) as mine:
            seen["own"] = taskworker.testing.active() is mine is not outer

    with taskworker.testing.eager() as outer:
        for target in (server, lambda: own_block(outer)):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
        assert seen["thread"] != threading.get_ident()
        assert taskworker.result(None, seen["id"])["subject"] == "Yo"
        assert seen["own"] is True
    after = threading.Thread(target=lambda: seen.update(after=taskworker.testing.active()))
    after.start()
    after.join()
    assert seen["after"] is None and taskworker.testing.active() is None


def test_json_arguments_round_trip_as_json_does(db: Any, tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    app, _ = load_app(tmp_path)
    task_id = app.send_email.enqueue(db, "é ✓", subject=json.dumps({"nested": [1, 2.5]}),
                                     cc=("a", "b"))
    assert query(db, "SELECT arguments FROM tasks WHERE id = %s", (task_id,))[0][0] == {
        "args": ["é ✓"], "kwargs": {"subject": '{"nested": [1, 2.5]}', "cc": ["a", "b"]}}
