"""When a task counts as started (part 13, items 3 and 4): a process claims slow
tasks only for its idle workers, so another process's workers get the rest; and
a rescue charges a lost worker only to a task whose handler started, so a task
queued behind a handler that blocked its process goes back uncharged.

The application modules are written into serve's working folder and loaded
with `--tasks`, as test_named_tasks.py does.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from invariants import FAST, query, wait_lines, wait_until
from proc import ServeFactory

# Tasks both processes know: "quick" returns at once, "slow" sleeps as told.
SHARED = '''
import os
import time

import taskworker


@taskworker.task("quick")
def quick(payload):
    return f"quick {os.getpid()}"


@taskworker.task("slow")
def slow(payload):
    time.sleep(float(payload))
    return f"slow {os.getpid()}"
'''
APPS = {
    # Process A also knows "hog", which computes without ever yielding (its
    # process stops answering); process B never claims it.
    "app_a": SHARED + '''

@taskworker.task("hog", priority=5)
def hog(payload):
    while True:
        pass
''',
    "app_b": SHARED,
}


def write_apps(tmp_path: Path) -> None:
    for name, text in APPS.items():
        (tmp_path / "cwd" / f"{name}.py").write_text(text)


def insert(db: Any, task: str, payload: str = "", priority: int = 0) -> int:
    return query(db, "INSERT INTO tasks (task, payload, priority) VALUES (%s, %s, %s) "
                     "RETURNING id", (task, payload, priority))[0][0]


def test_a_task_queued_behind_a_blocked_handler_is_rescued_uncharged(
        db_url: str, db: Any, serve: ServeFactory, tmp_path: Path) -> None:
    """A (one worker, FETCH_LIMIT=2: a round of prefetch) claims the hog and the
    quick task; the hog blocks A for good, the quick task waits in A's queue.
    B rescues both once their leases run out. With MAX_RESCUES=0 a charged
    rescue would park the quick task in error ("abandoned: worker lost 1
    times"); it never started, so it goes back uncharged and B runs it."""
    write_apps(tmp_path)
    hog, quick = [r[0] for r in query(  # (one statement: A claims both at once)
        db, "INSERT INTO tasks (task, priority) VALUES ('hog', 5), ('quick', 0) RETURNING id")]
    a = serve(db_url, env={**FAST, "WORKER_COUNT": "1", "FETCH_LIMIT": "2",
                           "LEASE_SECONDS": "2", "MAX_RESCUES": "0"}, args=["--tasks", "app_a"])
    wait_until(lambda: query(db, "SELECT count(DISTINCT locked_by) = 1 AND count(*) = 2 "
                                 "FROM tasks WHERE status = 'in_progress'")[0][0],
               30, "A to claim the hog and the quick task together", [a], fail_on_exit=True)
    b = serve(db_url, env={**FAST, "WORKER_COUNT": "1", "LEASE_SECONDS": "2",
                           "MAX_RESCUES": "0"}, args=["--tasks", "app_b"])
    wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = %s", (quick,))[0][0]
               in ("done", "error"), 60, "the quick task to end", [a, b])
    rows = {r[0]: r[1:] for r in query(
        db, "SELECT id, status, error, rescues, unstarted_rescues, attempts, result "
            "FROM tasks ORDER BY id")}
    status, error, rescues, unstarted, attempts, result = rows[quick]
    assert (status, rescues, unstarted, attempts) == ("done", 0, 1, 1), (rows, b.output())
    assert result == f"quick {b.pid}"
    assert re.search(rf"Of those, \d+ had not started \(not charged a lost worker\): "
                     rf"[\d, ]*\b{quick}\b", b.output()), b.output()
    assert rows[hog][0] != "done"
    a.kill()


def test_slow_tasks_are_not_hoarded_by_the_first_process(
        db_url: str, db: Any, serve: ServeFactory, tmp_path: Path) -> None:
    """Two processes of two workers, FETCH_LIMIT unset, four tasks of 8 s: the
    first process to see them claims two (its idle workers: no task rate is
    measured yet), and the second, started while those run (8 s), runs the
    other two, instead of one holding all four while the other sits idle."""
    write_apps(tmp_path)
    env = {**FAST, "WORKER_COUNT": "2", "LEASE_SECONDS": "10"}
    a = serve(db_url, env=env, args=["--tasks", "app_b"])
    a.wait_for(r"Starting worker 2")
    ids = [insert(db, "slow", "8") for _ in range(4)]
    wait_lines(a, r"Processing task ID", 2)
    b = serve(db_url, env=env, args=["--tasks", "app_b"])
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'done'")[0][0]
               == 4, 60, "the four tasks to be done", [a, b])
    ran = [r[0] for r in query(db, "SELECT result FROM tasks WHERE id = ANY(%s) ORDER BY id",
                               (ids,))]
    assert sorted(ran) == sorted([f"slow {a.pid}"] * 2 + [f"slow {b.pid}"] * 2), ran
