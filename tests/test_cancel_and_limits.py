"""Cancelling a running task, and concurrency limits across processes: several
`serve` processes, the CLI, kill -9, and the rows they leave."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from invariants import FAST, query, stop_all, wait_until
from proc import child_env, cli
from test_named_tasks import SPAN, add, finished, most_at_once, row, spans
from test_named_tasks import app as write_app

APP = SPAN + '''
import psycopg2


@taskworker.task("sleepy")
def sleepy(payload):
    return span(payload)


@taskworker.task("dbwork")
def dbwork(payload):
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(30)")
    finally:
        conn.close()


@taskworker.task("limited", max_running=2)
def limited(payload):
    return span(payload)
'''


def app(tmp_path: Path) -> list[str]:
    return write_app(tmp_path, APP)


def running(db: Any, task_id: int) -> bool:
    """Its handler started, as the table knows it (started_at: written by the
    process's heartbeat; before that the task is only claimed)."""
    return bool(query(db, "SELECT status = 'in_progress' AND started_at IS NOT NULL "
                          "FROM tasks WHERE id = %s", (task_id,))[0][0])


def cancel_when_running(db_url: str, db: Any, task_id: int, procs: list[Any]) -> None:
    wait_until(lambda: running(db, task_id), 20, f"task {task_id} to run", procs)
    code, out, err = cli(db_url, "cancel", str(task_id))
    assert (code, err) == (0, "")
    assert out == f"Task {task_id}: running; asked its process to stop it (it ends cancelled)\n"


def test_cancel_stops_a_sleeping_handler_and_one_in_a_query(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    p = serve(db_url, env=FAST, args=app(tmp_path))
    for task in ("sleepy", "dbwork"):
        task_id = add(db, task, "30")
        cancel_when_running(db_url, db, task_id, [p])
        # LISTEN on: the holder hears it at once and stops the handler.
        wait_until(lambda: row(db, task_id)["status"] == "cancelled", 5,  # noqa: B023
                   f"{task} task {task_id} to be cancelled", [p])
        assert row(db, task_id)["attempts"] == 1
        assert row(db, task_id)["error"] == "cancelled: by taskworker cancel"
        p.wait_for(rf"Task ID: {task_id} cancel requested: stopping it")
        p.wait_for(rf"Task ID: {task_id} processed with status: cancelled")
    # serve goes on working.
    after = add(db, "sleepy", "0")
    wait_until(lambda: finished(db, [after]), 10, "a task after the cancels", [p])
    assert row(db, after)["status"] == "done"
    assert "crashed" not in p.output()
    stop_all([p], signal.SIGINT)


def test_cancel_without_listen_is_seen_at_the_next_heartbeat(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    p = serve(db_url, env={**FAST, "LISTEN": "false", "LEASE_SECONDS": "3"}, args=app(tmp_path))
    task_id = add(db, "sleepy", "30")
    cancel_when_running(db_url, db, task_id, [p])
    wait_until(lambda: row(db, task_id)["status"] == "cancelled", 5,
               "the cancel to be seen by a heartbeat (every LEASE_SECONDS / 3)", [p])
    stop_all([p], signal.SIGINT)


def test_a_cancel_requested_of_a_dead_holder_ends_cancelled(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    env = {**FAST, "LEASE_SECONDS": "2"}
    doomed = serve(db_url, env=env, args=app(tmp_path))
    task_id = add(db, "sleepy", "30")
    wait_until(lambda: running(db, task_id), 20, "the task to run", [doomed])
    doomed.kill()  # kill -9: it never hears of the cancel
    code, out, _ = cli(db_url, "cancel", str(task_id))
    assert code == 0 and "asked its process to stop it" in out
    assert row(db, task_id)["status"] == "in_progress"
    rescuer = serve(db_url, env=env, args=app(tmp_path))
    wait_until(lambda: row(db, task_id)["status"] == "cancelled", 15,
               "the rescue to end the task cancelled", [rescuer])
    assert row(db, task_id)["attempts"] == 1  # not run again
    rescuer.wait_for(rf"Task ID: {task_id} processed with status: cancelled \(cancel "
                     r"requested, its worker was lost\)")
    stop_all([rescuer], signal.SIGINT)


def test_max_running_holds_across_processes_and_survives_kill_9(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    """Three processes share max_running=2: never more than two limited tasks
    run at once, whichever processes run them (which ones do is up to timing:
    not asserted), and unlimited tasks beside them are not held back. A process
    killed -9 while it holds a slot: the slot comes back with its lease, another
    process reruns the task, and the limit still holds."""
    env = {**FAST, "WORKER_COUNT": "5", "LEASE_SECONDS": "2"}
    args = app(tmp_path)
    ids = [add(db, "limited", "0.3") for _ in range(12)]
    free = [add(db, "sleepy", "0.3") for _ in range(10)]
    procs = [serve(db_url, env=env, args=args) for _ in range(3)]
    wait_until(lambda: finished(db, ids + free), 40, "every task to finish", procs)
    assert most_at_once(spans(db, ids)) <= 2  # the limit, never passed
    assert most_at_once(spans(db, free)) > 2  # (unlimited tasks are not held back)

    # Both slots taken (the limit reached, as the table shows it), then a holder
    # killed -9: its slots come back with their leases, and the others run the
    # rest, still two at a time.
    slow = [add(db, "limited", "1.5") for _ in range(4)]
    taken = ("SELECT z.task_id, z.locked_by FROM taskworker_slots AS z JOIN tasks AS t "
             "ON t.id = z.task_id WHERE z.task_id IS NOT NULL ORDER BY t.updated_at DESC")
    wait_until(lambda: len(query(db, taken)) == 2, 20, "both slots taken", procs)
    task_id, holder = query(db, taken)[0]  # the task claimed last: it has just started
    victim = next(p for p in procs if f":{p.pid}:" in holder)
    victim.kill()
    assert row(db, task_id)["status"] == "in_progress"  # (dead with it, until its lease ends)
    rest = [p for p in procs if p is not victim]
    wait_until(lambda: finished(db, slow), 40, "the slow limited tasks to finish", rest)
    assert most_at_once(spans(db, slow)) <= 2
    assert {row(db, i)["status"] for i in slow} == {"done"}
    # The victim's task: rescued once its lease ran out, and run by another process.
    (_, _, pid), = spans(db, [task_id])
    assert pid != victim.pid and pid in {p.pid for p in rest}
    # (lost once: charged if its start was in the table when it died, see migration 011)
    assert query(db, "SELECT rescues + unstarted_rescues FROM tasks WHERE id = %s",
                 (task_id,)) == [(1,)]
    assert query(db, taken) == []  # every slot free again
    stop_all(rest, signal.SIGINT)


STRAY_STOP = '''
from gevent import monkey
monkey.patch_all()
import time
import gevent
from taskworker.processor.catalog import Catalog
from taskworker.processor.dispatch import Dispatch
from taskworker.processor.heartbeat import LeaseExpiring
from taskworker.processor.worker import Worker
from taskworker.settings import load
from taskworker.store.tasks import ClaimedTask

settings = load({"LOG_LEVEL": "WARNING"})
dispatch, outcomes = Dispatch(1, 30), []
worker = Worker(settings, Catalog(settings, (str.upper, False), {}), dispatch, outcomes.append,
                lambda: False)
greenlet = gevent.spawn(worker.loop, 1)
# One turn of the hub runs the callbacks due (the worker's start, then each
# kill's throw) before any timer: no wait for time to pass.
gevent.sleep(0)  # the worker waits for a task
for stop in (gevent.GreenletExit(), LeaseExpiring()):
    greenlet.kill(stop, block=False)  # as a cancel or the lease guard, late
    gevent.sleep(0)
dispatch.hand_out([ClaimedTask(7, "still here", 1, 0)], time.monotonic())
deadline = time.monotonic() + 30
while not outcomes and not greenlet.dead and time.monotonic() < deadline:
    gevent.sleep(0.01)  # the worker runs the task
print(greenlet.dead, [(o.kind, o.result) for o in outcomes])
'''


def test_a_stop_that_arrives_after_its_task_ended_leaves_the_worker_working() -> None:
    """`taskworker cancel` and the lease guard stop a task by throwing into its
    worker from a hub callback; one that lands after the task ended, while the
    worker waits for the next, must not end the worker."""
    done = subprocess.run([sys.executable, "-c", STRAY_STOP], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False [('done', 'STILL HERE')]", done.stderr
