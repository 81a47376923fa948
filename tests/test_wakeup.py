"""Part 3, waking up: an idle `taskworker serve` hears about new tasks through
LISTEN/NOTIFY, however they were inserted, and not by polling (FETCH_INTERVAL is
60 s in these tests, so a poll cannot explain a task done within seconds).

The bound here (WAKE_BOUND) is functional, not a speed target: a NOTIFY arrives
in milliseconds, a missed one would leave the task waiting a minute (or 30 s, the
lease, for a retry); so it is generous, for a loaded machine.
"""
from __future__ import annotations

import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import (
    create_runs_table,
    handler_env,
    insert_tasks,
    query,
    stop_all,
    tail,
    wait_until,
)
from proc import ServeFactory, ServeProcess, run_cli

from taskworker.store import processes
from taskworker.store.database import Direct

SEED_SQL = Path(__file__).resolve().parent.parent / "seed" / "seed_tasks.sql"
CHANNEL = "taskworker_tasks"

# Instant demo tasks; polling only once a minute. LEASE_SECONDS stays at its
# default (30 s) on purpose: the fetcher also wakes when the soonest lease
# expires, and a short lease would hide a missed wake-up.
IDLE = {
    "TASK_MIN_SECONDS": "0",
    "TASK_MAX_SECONDS": "0",
    "TASK_FAILURE_RATE": "0",
    "FETCH_INTERVAL": "60",
    "LOG_LEVEL": "INFO",
}
WAKE_BOUND = 15.0  # seconds from commit to done for a task inserted into an idle process



def backends(db: Any, app: str) -> list[int]:
    """Pids of this database's backends with application_name `app`."""
    return [r[0] for r in query(db, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND application_name = %s", (app,))]


def wait_idle_and_listening(db: Any, p: ServeProcess, timeout: float = 20) -> int:
    """Wait until the process's listener has run LISTEN and sits idle, and the
    fetcher has claimed since (the catch-up the listener asks for once it
    listens, for what was inserted meanwhile: what the test inserts next can then
    only be found through a NOTIFY); return the listener's pid."""
    def caught_up() -> list[int]:
        return [r[0] for r in query(
            db, "SELECT l.pid FROM pg_stat_activity AS l, pg_stat_activity AS f "
                "WHERE l.datname = current_database() AND f.datname = current_database() "
                "AND l.application_name = 'taskworker listener' AND l.state = 'idle' "
                # its LISTEN, or the statements that follow it (its own checks)
                "AND (l.query ILIKE '%%LISTEN taskworker_tasks%%' "
                "     OR l.query ILIKE '%%pg_notify%%' OR l.query ILIKE '%%pg_backend_pid%%') "
                "AND f.application_name = 'taskworker fetcher' AND f.state = 'idle' "
                "AND f.query_start > l.state_change")]

    pids = wait_until(caught_up, timeout, "the listener to LISTEN and the fetcher to catch up",
                      [p], fail_on_exit=True)
    assert len(pids) == 1, pids
    return pids[0]


def wait_done(db: Any, ids: list[int], timeout: float, p: ServeProcess, how: str) -> float:
    """Wait until every task in `ids` is done; return the seconds it took."""
    start = time.monotonic()

    def done() -> bool:
        rows = query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = 'done'",
                     (ids,))
        return rows[0][0] == len(ids)

    wait_until(done, timeout, f"{len(ids)} task(s) inserted by {how} to be done", [p],
               interval=0.02, fail_on_exit=True)
    return time.monotonic() - start


def all_ids(db: Any) -> set[int]:
    return {r[0] for r in query(db, "SELECT id FROM tasks")}


# --- 1. wake on NOTIFY


def test_idle_worker_wakes_for_every_kind_of_insert(db_url: str, db: Any,
                                                    serve: ServeFactory) -> None:
    p = serve(db_url, env=IDLE)
    wait_idle_and_listening(db, p)

    # (a) taskworker's own enqueue command (a separate process and connection).
    code, out, err = run_cli(["enqueue", "via enqueue"], env={"DATABASE_URL": db_url})
    assert code == 0, err
    [enqueued] = [int(line) for line in out.split()]
    wait_done(db, [enqueued], WAKE_BOUND, p, "taskworker enqueue")

    # (b) the seed file through psql, as the README tells users to.
    psql = shutil.which("psql")
    if psql is not None:
        before = all_ids(db)
        subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db_url,
                        "-f", str(SEED_SQL)], check=True, capture_output=True, timeout=30)
        seeded = sorted(all_ids(db) - before)
        assert len(seeded) == 20
        wait_done(db, seeded, WAKE_BOUND, p, "psql -f seed/seed_tasks.sql")

    # (c) an application's plain INSERT on its own connection.
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) VALUES ('plain insert') RETURNING id")
        [plain] = cur.fetchone()
    wait_done(db, [plain], WAKE_BOUND, p, "a plain INSERT")

    stop_all([p], signal.SIGINT)
    out = p.output()
    assert "Traceback" not in out, tail(out)
    for task_id in all_ids(db):
        assert f"Task ID: {task_id} processed with status: done" in out
    if psql is None:
        pytest.skip("psql not installed: the seed-file case was not run (the others passed)")


def test_bulk_insert_sends_one_notification(db_url: str, db: Any) -> None:
    # The trigger is per statement, not per row: PostgreSQL would fold the
    # identical notifications of one transaction's rows into one anyway, but only
    # after a trigger call per row (a million for a million rows). Check the
    # definition, then the count.
    [(tgtype,)] = query(db, "SELECT tgtype FROM pg_trigger WHERE tgrelid = 'tasks'::regclass "
                            "AND tgname = 'tasks_notify_insert'")
    assert tgtype & 1 == 0, "tasks_notify_insert is a FOR EACH ROW trigger"

    # Inserts notify only while some process sleeps (migration 018): one does.
    processes.register(Direct(db), holder="sleeper", host="h", pid=1, queues=None, tasks=[],
                       default_handler=True, schedules={}, lease_seconds=30)
    listener = psycopg2.connect(db_url, connect_timeout=10)
    try:
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")

        def notifications(marker: str) -> list[Any]:
            """The notifications that arrive before `marker`, which this sends
            last: notifications come in the order their transactions committed,
            so once it is here every earlier one is too."""
            query(db, "SELECT pg_notify(%s, %s)", (CHANNEL, marker))
            got: list[Any] = []

            def marker_came() -> bool:
                if select.select([listener], [], [], 0.05)[0]:
                    listener.poll()
                    got.extend(listener.notifies)
                    listener.notifies.clear()
                return any(n.payload == marker for n in got)

            wait_until(marker_came, 30, f"the notification {marker!r}", interval=0)
            return [n for n in got if n.payload != marker]

        with db.cursor() as cur:  # autocommit: committed when execute() returns
            cur.execute("INSERT INTO tasks (payload) "
                        "SELECT 'bulk ' || n FROM generate_series(1, 10000) AS n")
            assert cur.rowcount == 10000
        bulk = notifications("after the bulk insert")
        assert [n.channel for n in bulk] == [CHANNEL], bulk

        # The count is per statement: two more statements, two more notifications.
        insert_tasks(db, ["one"])
        insert_tasks(db, ["two", "three"])
        assert [n.channel for n in notifications("after two more")] == [CHANNEL, CHANNEL]
    finally:
        listener.close()


# --- 2. a dead LISTEN connection is re-opened, and the fetcher catches up


def test_listener_reconnects_and_catches_up(db_url: str, db: Any, serve: ServeFactory) -> None:
    p = serve(db_url, env=IDLE)
    old = wait_idle_and_listening(db, p)
    fetcher = backends(db, "taskworker fetcher")
    assert fetcher

    [(killed,)] = query(db, "SELECT pg_terminate_backend(%s)", (old,))
    assert killed
    wait_until(lambda: old not in backends(db, "taskworker listener"), 5,
               "the listener's backend to exit", [p], interval=0.002, fail_on_exit=True)
    # Right away, while the listener reconnects: a NOTIFY now may reach no one.
    [task_id] = insert_tasks(db, ["while the listener was away"])
    wait_done(db, [task_id], WAKE_BOUND, p, "an INSERT while the listener reconnected")

    p.wait_for(r"Database connection lost \(listener\): .*; reconnecting$", timeout=5)
    p.wait_for(r"Reconnected to database \(listener\)$", timeout=5)
    new = wait_until(lambda: backends(db, "taskworker listener"), 5, "a new listener", [p],
                     fail_on_exit=True)
    assert new != [old] and len(new) == 1, (old, new)
    # Only the listener was cut off: the fetcher kept its connection.
    assert backends(db, "taskworker fetcher") == fetcher
    out = p.output()
    assert "(fetcher)" not in out, tail(out)

    # And it listens again: the next insert is picked up through NOTIFY.
    wait_idle_and_listening(db, p)
    [again] = insert_tasks(db, ["after the reconnect"])
    wait_done(db, [again], WAKE_BOUND, p, "an INSERT after the reconnect")
    stop_all([p], signal.SIGINT)


# --- 3. LISTEN=false falls back to polling


def test_listen_false_polls_and_opens_no_listener(db_url: str, db: Any,
                                                  serve: ServeFactory) -> None:
    p = serve(db_url, env={**IDLE, "FETCH_INTERVAL": "0.3", "LISTEN": "false"})
    p.wait_for(r"Starting task processor with 5 workers, fetching every 300ms$")
    wait_until(lambda: backends(db, "taskworker fetcher"), 20, "the fetcher to connect", [p],
               fail_on_exit=True)

    for round_ in range(2):  # inserted while serve runs: only polling can find them
        ids = insert_tasks(db, [f"polled {round_}.{n}" for n in range(5)])
        wait_done(db, ids, 10, p, "INSERT with LISTEN=false")
        assert backends(db, "taskworker listener") == []
        assert backends(db, "taskworker fetcher")  # the query itself sees serve's backends
    stop_all([p], signal.SIGINT)
    assert "(listener)" not in p.output()


# --- 4. a retry's run_at wakes the fetcher when it falls due


def test_retry_backoff_wakes_the_fetcher(db_url: str, db: Any, serve: ServeFactory) -> None:
    create_runs_table(db)
    p = serve(db_url, env=handler_env("flaky", **IDLE, MAX_RETRIES="1", RETRY_BACKOFF="1s",
                                      TEST_FAIL_TIMES="1"))
    wait_idle_and_listening(db, p)
    [task_id] = insert_tasks(db, ["retry me"])
    # Backoff 1 s * U(0.8, 1.2): done in about 1.2 s if the due retry wakes the
    # fetcher; a minute (FETCH_INTERVAL) or 30 s (the lease) if nothing does.
    wait_done(db, [task_id], WAKE_BOUND, p, "a retry after a 1 s backoff")
    stop_all([p], signal.SIGINT)

    [(status, attempts, error)] = query(db, "SELECT status, attempts, error FROM tasks")
    assert (status, attempts, error) == ("done", 2, "RuntimeError: failed on attempt 1")
    runs = query(db, "SELECT attempt, extract(epoch FROM at) FROM runs ORDER BY at")
    assert [a for a, _ in runs] == [1, 2]
    assert float(runs[1][1]) - float(runs[0][1]) >= 0.8  # the backoff was waited out
    assert f"Task ID: {task_id} failed on attempt 1, retrying in " in p.output()
