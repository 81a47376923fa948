"""Named tasks, queues, priorities and a handler's own endings, through `serve`
processes and the rows they leave.

The application module is written into serve's working folder (serve puts it on
sys.path, as it does for TASK_HANDLER) and loaded with `--tasks app`. Each task
function returns "start end pid" (time.time()), so the tests read from the rows
when each run happened and where.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
from invariants import FAST, query, stop_all, wait_until
from proc import cli

# The head of every application module the part-7 tests write: `span` sleeps
# as the payload says and returns when it ran and where (see `spans`).
SPAN = '''
import os
import time

import taskworker


def span(payload):
    start = time.time()
    time.sleep(float(payload or 0))
    return f"{start} {time.time()} {os.getpid()}"
'''

APP = SPAN + '''

@taskworker.task("greet")
def greet(payload):
    return "hello " + payload


@taskworker.task("shout", queue="loud", priority=3)
def shout(payload, task):
    return f"{payload.upper()} ({task.name} in {task.queue}, attempt {task.attempt})"


@taskworker.task("work")
def work(payload):
    return span(payload)


@taskworker.task("flaky", max_retries=2, retry_backoff=0)
def flaky(payload):
    raise RuntimeError("always")


@taskworker.task("slow", timeout="200ms")
def slow(payload):
    return span(5)


@taskworker.task("give_up", max_retries=5)
def give_up(payload):
    raise taskworker.Fail("the invoice is void")


@taskworker.task("later")
def later(payload, task):
    marker = os.path.join(os.getcwd(), f"snoozed-{task.id}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise taskworker.Snooze(1)
    return "ran after the snooze"


@taskworker.task("stop_me")
def stop_me(payload):
    raise taskworker.Cancel("customer left")


def plain(payload):  # a TASK_HANDLER
    return "default " + payload
'''


def app(tmp_path: Path, text: str = APP) -> list[str]:
    """Write the module `text` as app.py into serve's folder; the serve arguments
    that load it."""
    (tmp_path / "cwd" / "app.py").write_text(text)
    return ["--tasks", "app"]


def add(db: Any, task: str | None, payload: str = "", queue: str = "default",
        priority: int = 0, delay: str = "0s") -> int:
    return query(db, "INSERT INTO tasks (task, payload, queue, priority, run_at) "
                     "VALUES (%s, %s, %s, %s, now() + %s::interval) RETURNING id",
                 (task, payload, queue, priority, delay))[0][0]


def row(db: Any, task_id: int) -> dict[str, Any]:
    cols = ("status", "result", "error", "attempts", "run_at", "queue")
    values = query(db, f"SELECT {', '.join(cols)} FROM tasks WHERE id = %s", (task_id,))[0]
    return dict(zip(cols, values, strict=True))


def spans(db: Any, ids: list[int]) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each task's run, in the order of `ids`."""
    results = dict(query(db, "SELECT id, result FROM tasks WHERE id = ANY(%s)", (ids,)))
    out = []
    for i in ids:
        start, end, pid = results[i].split()
        out.append((float(start), float(end), int(pid)))
    return out


def most_at_once(runs: list[tuple[float, float, int]]) -> int:
    """The largest number of runs that overlapped at one moment."""
    events = sorted([(s, 1) for s, _, _ in runs] + [(e, -1) for _, e, _ in runs])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def finished(db: Any, ids: list[int]) -> bool:
    return query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status NOT IN "
                     "('pending', 'in_progress')", (ids,))[0][0] == len(ids)


def test_named_tasks_run_their_own_function_and_the_rest_waits(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    greet = add(db, "greet", "ann")
    shout = add(db, "shout", "hey", queue="loud")
    unnamed = add(db, None, "psql row")
    unknown = add(db, "added_by_a_newer_deploy", "x")
    p = serve(db_url, env=FAST, args=app(tmp_path))
    wait_until(lambda: finished(db, [greet, shout]), 20, "the named tasks to finish", [p])
    assert row(db, greet)["result"] == "hello ann"
    assert row(db, shout)["result"] == "HEY (shout in loud, attempt 1)"
    p.wait_for(r"Serving tasks: flaky, give_up, greet, later, shout, slow, stop_me, work; "
               r"queues: all")
    # TASK_MODULES without TASK_HANDLER: no default handler, so the psql row is
    # left for a process that has one, and a name this process does not know is
    # never claimed (a rolling deploy's new task must not fail on old processes).
    wait_until(lambda: "Fetched" in p.output(), 5, "a claim", [p])
    assert (row(db, unnamed)["status"], row(db, unknown)["status"]) == ("pending", "pending")
    q = serve(db_url, env={**FAST, "TASK_HANDLER": "app:plain"}, args=app(tmp_path))
    wait_until(lambda: finished(db, [unnamed]), 20, "the unnamed task to finish", [q])
    assert row(db, unnamed)["result"] == "default psql row"
    assert row(db, unknown)["status"] == "pending"
    stop_all([p, q], signal.SIGINT)


def test_per_task_options_and_endings(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    flaky, slow = add(db, "flaky"), add(db, "slow")
    give_up, later, stop_me = add(db, "give_up"), add(db, "later"), add(db, "stop_me")
    p = serve(db_url, env={**FAST, "MAX_RETRIES": "0", "TASK_TIMEOUT": "60"}, args=app(tmp_path))
    ids = [flaky, slow, give_up, later, stop_me]
    wait_until(lambda: finished(db, ids), 30, "every task to finish", [p])
    # max_retries=2 beats MAX_RETRIES=0: three runs, then error.
    assert (row(db, flaky)["status"], row(db, flaky)["attempts"]) == ("error", 3)
    # timeout=200ms beats TASK_TIMEOUT=60s.
    assert row(db, slow)["status"] == "error"
    assert "timed out after 200ms" in row(db, slow)["error"]
    # Fail: error at once, however many retries are left.
    assert row(db, give_up) | {"run_at": None} == {
        "status": "error", "result": None, "error": "the invoice is void", "attempts": 1,
        "run_at": None, "queue": "default"}
    # Snooze: pending again after its delay; the snoozed run is not an attempt.
    assert (row(db, later)["status"], row(db, later)["result"]) == ("done", "ran after the snooze")
    assert row(db, later)["attempts"] == 1
    p.wait_for(rf"Task ID: {later} snoozed for 1\.0s")
    # Cancel: cancelled, not error, not retried.
    assert (row(db, stop_me)["status"], row(db, stop_me)["attempts"]) == ("cancelled", 1)
    assert row(db, stop_me)["error"] == "cancelled: customer left"
    stop_all([p], signal.SIGINT)


def test_queues_served_capped_paused(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    capped = [add(db, "work", "0.2", queue="a") for _ in range(6)]
    other = [add(db, "work", "0", queue="b") for _ in range(3)]
    unserved = add(db, "work", "0", queue="c")
    query(db, "INSERT INTO taskworker_paused_queues (queue) VALUES ('b')")
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "5"},
              args=[*app(tmp_path), "--queues", "a:2,b"])
    wait_until(lambda: finished(db, capped), 20, "queue a to finish", [p])
    # QUEUES=a:2: never more than 2 of queue a's tasks at once in this process.
    assert most_at_once(spans(db, capped)) == 2
    # b is paused: nothing claimed from it until `resume`.
    assert {row(db, i)["status"] for i in other} == {"pending"}
    query(db, "DELETE FROM taskworker_paused_queues WHERE queue = 'b'")
    wait_until(lambda: finished(db, other), 20, "queue b to finish", [p])
    assert row(db, unserved)["status"] == "pending"  # c is not served
    stop_all([p], signal.SIGINT)


def test_priority_order_within_a_queue(db_url: str, db: Any, serve: Any,
                                       tmp_path: Path) -> None:
    # Higher priority first, then the task due longest, then the lowest id.
    plan = [(0, "0s"), (5, "0s"), (0, "-1 minute"), (5, "-1 minute"), (1, "0s"), (9, "0s")]
    ids = [add(db, "work", "0", priority=prio, delay=delay) for prio, delay in plan]
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "1", "FETCH_LIMIT": "10"}, args=app(tmp_path))
    wait_until(lambda: finished(db, ids), 20, "every task to finish", [p])
    runs = dict(zip(ids, spans(db, ids), strict=True))
    order = sorted(ids, key=lambda i: runs[i][0])
    assert order == [ids[5], ids[3], ids[1], ids[4], ids[2], ids[0]]
    stop_all([p], signal.SIGINT)


def test_queues_take_turns(db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """A queue full of high-priority tasks does not hold up another queue: each
    claim shares the free workers between the queues with due tasks."""
    busy = [add(db, "work", "0.1", queue="busy", priority=10) for _ in range(20)]
    quiet = [add(db, "work", "0.1", queue="quiet") for _ in range(3)]
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "2", "FETCH_LIMIT": "2"}, args=app(tmp_path))
    wait_until(lambda: finished(db, quiet), 20, "the quiet queue to finish", [p])
    busy_left = query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = 'pending'",
                      (busy,))[0][0]
    assert busy_left >= 10, "the quiet queue waited for the busy one"
    stop_all([p], signal.SIGINT)


def test_a_delayed_named_task_runs_on_time_without_polling(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """`enqueue(..., task=..., delay=...)`: claimed within about a second of its time,
    by a process whose FETCH_INTERVAL is far longer (it sleeps until the due time)."""
    p = serve(db_url, env={**FAST, "FETCH_INTERVAL": "60"}, args=app(tmp_path))
    p.wait_for("Starting worker 1")
    code, out, err = cli(db_url, "enqueue", "--task", "work", "--delay", "2s", "0")
    assert code == 0 and err.startswith("Warning: task 'work' could not be checked"), err
    task_id = int(out.split()[-1])
    wait_until(lambda: finished(db, [task_id]), 10, "the delayed task to run", [p])
    start = spans(db, [task_id])[0][0]
    created, run_at = query(db, "SELECT extract(epoch FROM created_at), "
                                "extract(epoch FROM run_at) FROM tasks WHERE id = %s",
                            (task_id,))[0]
    assert float(run_at) - float(created) == pytest.approx(2, abs=0.05)
    assert float(run_at) <= start < float(run_at) + 1.0
    stop_all([p], signal.SIGINT)


def test_a_drained_queue_leaves_its_share_to_the_others(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """Once a queue has nothing due, the next claims are not split with it: the
    busy queue gets whole claims again at once (not only at the next look for
    queues, PAIRS_TTL later)."""
    busy = [add(db, "work", "0", queue="busy") for _ in range(300)]
    brief = [add(db, "work", "0", queue="brief") for _ in range(5)]
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "10", "FETCH_LIMIT": "10"},
              args=app(tmp_path))
    wait_until(lambda: finished(db, busy + brief), 30, "every task to finish", [p])
    sizes = [int(n) for n in re.findall(r"Fetched (\d+) tasks", p.output())]
    assert sum(sizes) == 305
    # 31 claims would do; split claims of 5 for the whole run would take 60.
    assert len(sizes) <= 40, sizes
    stop_all([p], signal.SIGINT)
