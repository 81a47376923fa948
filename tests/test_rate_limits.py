"""Rate limits (rate_limit="5/s"): real `serve` processes share one limit, every
start counts (retries and rescues included), a process with nothing allowed
sleeps until the next start is, and `status` shows the limit and what waits for
it. Starts are counted from the handlers' own clocks: each handler appends its
start time to a file before anything else."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

from dashboard_client import running_dashboard
from invariants import FAST, query, stop_all, wait_until
from proc import cli
from test_named_tasks import add, finished
from test_named_tasks import app as write_app

APP = '''
import os
import time

import taskworker

STARTS = os.environ["STARTS_FILE"]


def record(payload):
    line = f"{time.time()} {os.getpid()} {taskworker.current_task().id} {payload}\\n"
    fd = os.open(STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@taskworker.task("rated", rate_limit="5/s", max_retries=3, retry_backoff=0)
def rated(payload):
    record(payload)
    task = taskworker.current_task()
    if payload == "fail once" and task.attempt == 1:
        raise RuntimeError("first attempt fails")
    if payload == "die once" and not os.path.exists(STARTS + ".died"):
        open(STARTS + ".died", "w").close()
        os.kill(os.getpid(), 9)
    time.sleep(0.05)
    return "ok"


@taskworker.task("slow_rated", rate_limit="2/s")
def slow_rated(payload):
    record(payload)
    return "ok"


@taskworker.task("free")
def free(payload):
    return "ok"
'''


def starts(path: Path) -> list[tuple[float, int, int, str]]:
    """(time, pid, task id, payload) of every handler start, in time order."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        at, pid, task_id, payload = line.split(" ", 3)
        rows.append((float(at), int(pid), int(task_id), payload))
    return sorted(rows)


def most_in_window(times: list[float], window: float) -> int:
    """The most starts in any window of `window` seconds (sliding: a stronger
    check than counting per calendar second)."""
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def test_rate_limit_holds_across_processes_with_retries_and_a_kill_9(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """Three processes share rate_limit="5/s": no window of one second ever holds
    more than five starts, counting every start: a retry's, and the run a
    process killed -9 began (its task rescued and run again). Tasks without a
    limit beside them are not held back."""
    path = tmp_path / "starts.txt"
    env = {**FAST, "WORKER_COUNT": "4", "LEASE_SECONDS": "2", "STARTS_FILE": str(path)}
    args = write_app(tmp_path, APP)
    ids = [add(db, "rated", "plain") for _ in range(16)]
    ids += [add(db, "rated", "fail once") for _ in range(3)]
    ids += [add(db, "rated", "die once")]
    free = [add(db, "free", "") for _ in range(200)]
    procs = [serve(db_url, env=env, args=args) for _ in range(3)]
    wait_until(lambda: finished(db, free), 30, "the tasks without a limit", procs)
    # (200 free tasks done while at most a few rated ones could start)
    assert query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = 'done'",
                 (ids,))[0][0] < 15
    wait_until(lambda: any(p.proc.poll() is not None for p in procs), 30,
               "the process that ran 'die once' to be killed")
    alive = [p for p in procs if p.proc.poll() is None]
    assert len(alive) == 2
    wait_until(lambda: finished(db, ids), 60, "every rated task to finish", alive)
    assert query(db, "SELECT status, count(*) FROM tasks WHERE id = ANY(%s) GROUP BY 1",
                 (ids,)) == [("done", len(ids))]
    runs = starts(path)
    # Every start is in the file (so in the windows above): one per task, one
    # more per retry, and one more per rescue (a task the killed process had
    # started: 'die once', and any that ran beside it unfinished).
    dead = next(p.pid for p in procs if p not in alive)
    for task_id in ids:
        mine = [(pid, payload) for _, pid, i, payload in runs if i == task_id]
        retried = mine[0][1] == "fail once"
        by_dead = sum(pid == dead for pid, _ in mine[:-1])
        assert 1 + retried <= len(mine) <= 1 + retried + by_dead, (task_id, mine)
    died = [pid for _, pid, _, payload in runs if payload == "die once"]
    assert len(died) == 2 and died[0] == dead and died[1] != dead
    assert len({pid for _, pid, _, _ in runs}) >= 2  # (shared between processes)
    assert most_in_window([at for at, _, _, _ in runs], 1.0) <= 5
    stop_all(alive, signal.SIGINT)


def test_a_process_sleeps_until_the_next_start_is_allowed_and_status_shows_the_limit(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """With FETCH_INTERVAL at a minute, a process that used up its two starts of
    the second still starts the next ones each second: it sleeps until the next
    token is free, not until its next poll. `status` shows the limit and how
    many tasks wait for it."""
    path = tmp_path / "starts.txt"
    env = {**FAST, "FETCH_INTERVAL": "60", "WORKER_COUNT": "5", "STARTS_FILE": str(path)}
    ids = [add(db, "slow_rated", str(i)) for i in range(6)]
    p = serve(db_url, env=env, args=write_app(tmp_path, APP))
    wait_until(lambda: len(starts(path)) >= 2, 20, "the first two starts", [p])
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert re.search(r"^slow_rated +2/s +[0-2] +[0-4] *$", out, re.M), out
    wait_until(lambda: finished(db, ids), 20, "the six tasks, two per second", [p])
    times = [at for at, _, _, _ in starts(path)]
    assert len(times) == 6 and most_in_window(times, 1.0) <= 2
    with running_dashboard(db_url, tmp_path) as d:
        live = d.client().get("/overview/live")
        assert live.status == 200
        rows = re.findall(r"<tr><td class=\"name\" title=\"(\w+)\">.*?</td>"
                          r"<td data-label=\"Limit\">([^<]+)</td>.*?"
                          r"<td class=\"num\" data-label=\"Waiting\">(\d+)</td>", live.body)
        assert rows == [("rated", "5/s", "0"), ("slow_rated", "2/s", "0")], live.body
    code, out, err = cli(db_url, "status", "--json")
    limits = json.loads(out)["rate_limits"]
    assert [(r["task"], r["limit"], r["per_seconds"], r["waiting"]) for r in limits] == [
        ("rated", 5, 1.0, 0), ("slow_rated", 2, 1.0, 0)]
    stop_all([p], signal.SIGINT)
