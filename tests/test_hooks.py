"""Hooks (part 16, item 4) in a real `serve`: each kind called when it should
be, with what it should get, in a context of its own per task; a hook that
raises is logged and changes no outcome. And (item 5) an `async def`
TASK_HANDLER stops serve at start with one line.

The application module is written into serve's working folder (`--tasks app`);
its hooks append one JSON line per call to a file the test reads.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from invariants import FAST, query, wait_until
from proc import run_cli

import taskworker

APP = '''
import contextvars
import json
import os

import taskworker
from taskworker import hooks

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks.jsonl")
scope = contextvars.ContextVar("scope", default=None)


def record(event, task=None, **more):
    line = {"event": event, **more}
    if task is not None:
        line.update(id=task.id, name=task.name, attempt=task.attempt, scope=scope.get())
    with open(RECORD, "a") as f:
        f.write(json.dumps(line) + "\\n")


@taskworker.task("ok")
def ok(n):
    return {"n": n, "scope": scope.get()}


@taskworker.task("boom", max_retries=1, retry_backoff=0)
def boom(n):
    raise ValueError(f"no {n}")


@hooks.process_started
def process_started():
    record("process_started")


@hooks.process_stopped
def process_stopped():
    record("process_stopped")


@hooks.task_started
def started(task):
    assert scope.get() is None  # (another task's value never leaks into this one)
    scope.set(f"set for {task.id}")
    record("started", task, current=taskworker.current_task().id)
    if task.name == "ok" and task.id % 2 == 0:
        raise RuntimeError("a start hook that fails")


@hooks.task_succeeded
def succeeded(task, result):
    record("succeeded", task, result=result)
    raise KeyError("a success hook that fails")


@hooks.task_failed
def failed(task, error):
    record("failed", task, error=repr(error))


@hooks.task_retrying
def retrying(task, error, delay):
    record("retrying", task, error=repr(error), delay=delay)
'''


def test_hooks_run_around_tasks_and_never_change_an_outcome(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    (tmp_path / "cwd" / "app.py").write_text(APP)
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "3"}, args=["--tasks", "app"])
    p.wait_for("Starting worker 3")
    with db.cursor() as cur:
        ok = [taskworker.enqueue(cur, task="ok", args=[n], force=True) for n in range(4)]
        boom = taskworker.enqueue(cur, task="boom", args=[7], force=True)

    def statuses() -> dict[int, str]:
        return dict(query(db, "SELECT id, status FROM tasks"))

    wait_until(lambda: statuses() == {**dict.fromkeys(ok, "done"), boom: "error"}, 30,
               lambda: f"every task done and boom in error: {statuses()}", [p])
    p.signal(signal.SIGTERM)
    assert p.wait() == 0
    calls = [json.loads(line) for line in
             (tmp_path / "cwd" / "hooks.jsonl").read_text().splitlines()]
    assert calls[0] == {"event": "process_started"}
    assert calls[-1] == {"event": "process_stopped"}
    by_task: dict[int, list[dict[str, Any]]] = {}
    for call in calls[1:-1]:
        by_task.setdefault(call.pop("id"), []).append(call)

    for n, task_id in enumerate(ok):
        scope = f"set for {task_id}"  # what its start hook set: its handler and outcome saw it
        assert by_task[task_id] == [
            {"event": "started", "name": "ok", "attempt": 1, "scope": scope,
             "current": task_id},
            {"event": "succeeded", "name": "ok", "attempt": 1, "scope": scope,
             "result": {"n": n, "scope": scope}}]
    assert [(c["event"], c["attempt"]) for c in by_task[boom]] == [
        ("started", 1), ("retrying", 1), ("started", 2), ("failed", 2)]
    assert by_task[boom][1]["error"] == by_task[boom][3]["error"] == "ValueError('no 7')"
    assert by_task[boom][1]["delay"] == 0

    # Hooks that raised were logged, each once, and changed nothing.
    out = p.output()
    for task_id in ok:
        assert out.count(f"Hook app.succeeded (task_succeeded) raised KeyError: 'a success "
                         f"hook that fails'; ignored (task ID: {task_id})") == 1
        assert (f"Hook app.started (task_started) raised RuntimeError: a start hook that "
                f"fails; ignored (task ID: {task_id})" in out) == (task_id % 2 == 0)
    values = dict(query(db, "SELECT id, return_value FROM tasks WHERE task = 'ok'"))
    assert values == {i: {"n": n, "scope": f"set for {i}"} for n, i in enumerate(ok)}


def test_an_async_def_handler_stops_serve_at_start(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "coro_handler.py").write_text("async def handle(payload):\n    return payload\n")
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": db_url, "PYTHONPATH": str(tmp_path),
                                             "TASK_HANDLER": "coro_handler:handle"}, timeout=30)
    assert code == 2
    assert err.strip() == (
        "Error: cannot use TASK_HANDLER='coro_handler:handle': it is an async def function, "
        "and taskworker's workers are gevent greenlets with no asyncio event loop to await "
        "it; write it as a plain def (under serve, sockets, time.sleep and psycopg2 are "
        "cooperative: a blocking call yields to the other tasks as an await would)")
