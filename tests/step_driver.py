"""Drives serve's own components step by step on a real database, for
test_interleavings.py: each scenario puts the steps of two greenlets in one
chosen order, deterministically, by running the other greenlet's step from a
hook at the exact point where it could run (no sleeps, no timing).

    python step_driver.py write URL HOLDER '[[task_id, fence, rescues, worker, result], ...]'
        The writing lane writes these outcomes (kind done) in one batch. Prints
        the completer's counters as JSON.

    python step_driver.py hand-out URL
        The writing lane claims along (Exchange._along) rows some of whose
        payloads are loaded after the claim; while they load, its connection
        is opened again and the claiming lane's loop takes its turn
        (Exchange.give_back_orphans). Prints, as JSON: the tasks handed to the
        workers and each one's row at hand-out time.

    python step_driver.py give-up URL ADMIN_URL DBNAME HOLDER GIVE_UP_AT BACK_AT
        The writing lane writes one outcome per task HOLDER holds while DBNAME
        refuses connections; its connection asks `should_stop` between retries,
        which answers True from its GIVE_UP_AT-th call on (shutdown gave up on
        the database), and connections are allowed again at its BACK_AT-th call
        (0: never). Prints the completer's counters as JSON.

    python step_driver.py outage-claim URL ADMIN_URL DBNAME
        The claiming lane claims while DBNAME refuses connections (its connection
        was cut); they are allowed again at its connection's 5th pause, well
        past LEASE_SECONDS=1. Prints the tasks handed out and, for each, the
        seconds its lease has left as the dispatch counts it, and whether a
        worker would start it (its lease not about to run out).

Patched as serve is; log lines come first on stdout, the JSON last.
"""
from __future__ import annotations

import json
import sys
from typing import Any


def patch() -> None:
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def exchange(settings: Any, holder: str, stopping: Any = lambda: False,
             giving_up: Any = lambda: False) -> Any:
    """An Exchange as serve builds it (tasks without a name run an identity
    handler; leases count as renewed)."""
    from taskworker.processor.catalog import Catalog
    from taskworker.processor.completer import Completer
    from taskworker.processor.dispatch import Dispatch
    from taskworker.processor.exchange import Exchange

    dispatch = Dispatch(settings.worker_count, settings.lease_seconds)
    completer = Completer(settings, dispatch, frees_slots=False)
    catalog = Catalog(settings, (lambda payload: payload, False), {})
    return Exchange(settings, holder, dispatch, catalog, completer, renewing=lambda: True,
                    stopping=stopping, giving_up=giving_up)


def write(url: str, holder: str, spec: str) -> None:
    from taskworker import logs
    from taskworker.processor.outcomes import DONE, Outcome
    from taskworker.settings import load
    from taskworker.store.tasks import ClaimedTask

    logs.setup("INFO")
    ex = exchange(load({"DATABASE_URL": url}), holder)
    batch = [Outcome(ClaimedTask(task_id, "payload", fence, rescues, fence=fence), worker, DONE,
                     result=result)
             for task_id, fence, rescues, worker, result in json.loads(spec)]
    for outcome in batch:
        ex.completer.put(outcome)
    ex.write(ex.writing, batch)
    print(json.dumps(ex.completer.stats()), flush=True)


def hand_out(url: str) -> None:
    import time

    import psycopg2

    from taskworker import logs
    from taskworker.settings import load
    from taskworker.store import tasks as store

    logs.setup("INFO")
    ex = exchange(load({"DATABASE_URL": url, "WORKER_COUNT": "20"}), "driver:1:handout")
    ex.fetcher.busy = True  # a busy process: claims come back full (see Fetcher.along)
    ex.fetcher._pairs, ex.fetcher._pairs_at = [("default", "")], time.monotonic()

    watcher = psycopg2.connect(url)
    watcher.autocommit = True
    seen: dict[int, Any] = {}
    load_payloads = store.payloads

    def payloads(db: Any, **kwargs: Any) -> Any:
        # The other lane's turn, at the one point where it can run: this lane's
        # connection was opened again (as after an outage), and the claiming
        # lane's loop comes round to its orphan check.
        ex._reconnected()
        ex.give_back_orphans()
        return load_payloads(db, **kwargs)

    hand_out_to_queue = ex.dispatch.hand_out

    def hand_out(tasks: list[Any], claimed_at: float) -> None:
        with watcher.cursor() as cur:  # what the table says at hand-out time
            cur.execute("SELECT id, status, locked_by, fence FROM tasks WHERE id = ANY(%s)",
                        ([t.id for t in tasks],))
            for task_id, status, locked_by, fence in cur.fetchall():
                seen[task_id] = {"status": status, "mine": locked_by == ex.holder,
                                 "fence": fence}
        hand_out_to_queue(tasks, claimed_at)

    store.payloads = payloads  # (intake.py calls it as store.payloads)
    ex.dispatch.hand_out = hand_out
    assert ex._along([]), "no claim along was due"
    ex.give_back_orphans()  # the claiming lane's next turn
    handed = [{"id": t.id, "fence": t.fence, "row": seen.get(t.id)}
              for t in ex.dispatch.close()]
    print(json.dumps({"handed": handed}), flush=True)


def give_up(url: str, admin_url: str, dbname: str, holder: str, give_up_at: str,
            back_at: str) -> None:
    import psycopg2
    from psycopg2.sql import SQL, Identifier

    from taskworker import logs
    from taskworker.processor.outcomes import DONE, Outcome
    from taskworker.settings import load
    from taskworker.store import tasks as store
    from taskworker.store.connection import Stopped
    from taskworker.store.database import Direct

    logs.setup("INFO")
    settings = load({"DATABASE_URL": url})
    conn = psycopg2.connect(url)
    conn.autocommit = True
    claimed = [row.task for row in
               store.claim(Direct(conn), holder=holder, limit=100, lease=300).rows]
    conn.close()
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True

    def allow(yes: bool) -> None:  # (the lane has no connection open yet)
        with admin.cursor() as cur:
            cur.execute(SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                Identifier(dbname), SQL("true" if yes else "false")))

    calls = 0

    def giving_up() -> bool:  # asked by the writing lane's connection between retries
        nonlocal calls
        calls += 1
        if calls == int(back_at):
            allow(True)
        return calls >= int(give_up_at)

    ex = exchange(settings, holder, giving_up=giving_up)
    ex.dispatch.hand_out(claimed, 0.0)
    batch = [Outcome(task, 1, DONE, result=f"result of {task.id}") for task in claimed]
    for outcome in batch:
        ex.completer.put(outcome)
    allow(False)
    ended = "written"
    try:
        ex.write(ex.writing, batch)
    except Stopped:  # as the processor's guard takes it: the lane stops
        ended = "stopped"
    finally:
        allow(True)
    print(json.dumps({"ended": ended, **ex.completer.stats()}), flush=True)


def outage_claim(url: str, admin_url: str, dbname: str) -> None:
    import time

    import psycopg2
    from psycopg2.sql import SQL, Identifier

    from taskworker import logs
    from taskworker.settings import load

    logs.setup("INFO")
    settings = load({"DATABASE_URL": url, "LEASE_SECONDS": "1", "WORKER_COUNT": "2"})
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    retries = 0

    def stopping() -> bool:  # asked by the claiming lane's connection between retries
        nonlocal retries
        retries += 1
        if retries == 10:  # (twice a pause: after at least 0.05+0.1+0.2+0.4+0.8 s)
            with admin.cursor() as cur:
                cur.execute(SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                    Identifier(dbname)))
        return False

    ex = exchange(settings, "driver:1:outage", stopping=stopping)
    ex.claiming.query("SELECT 1")  # connected, then cut off
    with admin.cursor() as cur:
        cur.execute(SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(Identifier(dbname)))
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'taskworker fetcher'", (dbname,))
    cut = time.monotonic()
    tasks, _ = ex.claim(ex.fetcher.plan(2))
    now = time.monotonic()
    margin = settings.lease_seconds / 3  # the worker's (worker.py)
    print(json.dumps({"outage": now - cut, "retries": retries, "handed": [
        {"id": t.id, "lease_left": ex.dispatch._lease_ends[t.id] - now,
         "would_start": not ex.dispatch.lease_ending(t, margin)} for t in tasks]}), flush=True)


if __name__ == "__main__":
    patch()
    scenario, *args = sys.argv[1:]
    {"write": write, "hand-out": hand_out, "give-up": give_up,
     "outage-claim": outage_claim}[scenario](*args)
