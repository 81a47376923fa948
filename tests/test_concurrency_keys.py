"""Concurrency per key (max_running_per_key with concurrency_key): real `serve`
processes share each key's limit, a saturated key does not hold back the other
keys, a process killed -9 gives its key's place back with its lease, and what
the enqueue refuses. Each handler returns its own start and end time and pid."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from invariants import FAST, query, stop_all, wait_until
from test_named_tasks import app as write_app
from test_named_tasks import finished, most_at_once

import taskworker

APP = '''
import os
import time

import taskworker


@taskworker.task("per_customer", max_running_per_key=1)
def per_customer(customer, seconds):
    start = time.time()
    time.sleep(seconds)
    return [start, time.time(), os.getpid()]


@taskworker.task("per_tenant", max_running_per_key=2)
def per_tenant(tenant, seconds):
    start = time.time()
    time.sleep(seconds)
    return [start, time.time(), os.getpid()]
'''


def add(db: Any, task: str, key: str, seconds: float) -> int:
    with db:
        return taskworker.enqueue(db, task=task, args=[key, seconds], concurrency_key=key,
                                  force=True)


def runs(db: Any, ids: list[int]) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each task's last run, in the order of `ids`."""
    values = dict(query(db, "SELECT id, return_value FROM tasks WHERE id = ANY(%s)", (ids,)))
    return [tuple(values[i]) for i in ids]  # type: ignore[misc]


def test_each_key_runs_within_its_limit_and_a_saturated_key_holds_back_no_other(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """Three processes: one hot customer with a backlog runs one task at a time,
    while a hundred cold customers' tasks run beside it (all of them done while
    the hot backlog is still there); a tenant limit of 2 runs two at a time."""
    hot = [add(db, "per_customer", "hot", 0.15) for _ in range(30)]
    cold = [add(db, "per_customer", f"cold-{n}", 0.1) for n in range(100)]
    tenant = [add(db, "per_tenant", "t1", 0.2) for _ in range(8)]
    assert query(db, "SELECT DISTINCT format FROM tasks") == [(3,)]
    env = {**FAST, "WORKER_COUNT": "8"}
    procs = [serve(db_url, env=env, args=write_app(tmp_path, APP)) for _ in range(3)]
    wait_until(lambda: finished(db, cold), 60, "the cold customers' tasks", procs)
    hot_left = query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = 'pending'",
                     (hot,))[0][0]
    assert hot_left > 0  # the cold keys did not wait behind the hot one
    wait_until(lambda: finished(db, hot + tenant), 60, "the hot customer's backlog", procs)
    assert query(db, "SELECT DISTINCT status FROM tasks") == [("done",)]
    assert most_at_once(runs(db, hot)) == 1
    assert most_at_once(runs(db, tenant)) == 2
    assert len({pid for _, _, pid in runs(db, hot)}) >= 2  # (one limit across processes)
    # Every key met has its row; the pruner's pass deletes the rows of keys
    # with no task left.
    assert query(db, "SELECT count(*) FROM taskworker_keys")[0][0] == 102
    stop_all(procs, signal.SIGINT)
    code = serve(db_url, env={**FAST, "PRUNE_AFTER": "1h"}, args=write_app(tmp_path, APP))
    wait_until(lambda: query(db, "SELECT count(*) FROM taskworker_keys")[0][0] == 0, 20,
               "the idle keys' rows to be pruned", [code])
    stop_all([code], signal.SIGINT)


def test_a_killed_holder_gives_its_keys_place_back_with_its_lease(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """The process running a key's one allowed task is killed -9: the key's
    place is taken while the dead holder's lease lasts, then the other process
    runs the key's tasks, still one at a time."""
    env = {**FAST, "WORKER_COUNT": "4", "LEASE_SECONDS": "2"}
    args = write_app(tmp_path, APP)
    first = add(db, "per_customer", "acme", 30)
    victim = serve(db_url, env=env, args=args)
    wait_until(lambda: query(db, "SELECT started_at IS NOT NULL FROM tasks WHERE id = %s",
                             (first,))[0][0], 20, "the long task to start", [victim])
    rest = [add(db, "per_customer", "acme", 0.2) for _ in range(4)]
    other = serve(db_url, env=env, args=args)
    other.wait_for(r"Serving tasks")
    victim.kill()
    query(db, "UPDATE tasks SET arguments = jsonb_set(arguments, '{args,1}', '0.2') "
              "WHERE id = %s", (first,))  # (its rerun is short)
    wait_until(lambda: finished(db, [first, *rest]), 40, "acme's tasks after the kill", [other])
    assert query(db, "SELECT rescues + unstarted_rescues FROM tasks WHERE id = %s",
                 (first,)) == [(1,)]
    spans = runs(db, [first, *rest])
    assert most_at_once(spans) == 1
    assert {pid for _, _, pid in spans} == {other.pid}
    stop_all([other], signal.SIGINT)


def test_what_the_enqueue_refuses(db: Any) -> None:
    @taskworker.task("keyless_here")
    def keyless(x: int) -> int:
        return x

    @taskworker.task("keyed_here", max_running_per_key=1)
    def keyed(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"^keyless_here\(\): a concurrency_key needs the "
                                         r"task's max_running_per_key"):
        keyless.options(concurrency_key="k").enqueue(db, 1)
    with pytest.raises(TypeError, match="^a concurrency_key goes with a call"):
        taskworker.enqueue(db, "text", task="keyed_here", concurrency_key="k")
    for bad, error in (("", ValueError), ("a\x00b", ValueError), (7, TypeError)):
        with pytest.raises(error, match="concurrency_key must be"):
            keyed.options(concurrency_key=bad).enqueue(db, 1)  # type: ignore[arg-type]
    db.rollback()
    assert query(db, "SELECT count(*) FROM tasks")[0][0] == 0
    task_id = keyed.options(concurrency_key="k1").enqueue(db, 5)
    db.commit()
    assert query(db, "SELECT format, concurrency_key, arguments FROM tasks WHERE id = %s",
                 (task_id,)) == [(3, "k1", json.loads('{"args": [5], "kwargs": {}}'))]
