"""serve names what holds vacuum back (processor/horizon.py): a transaction left
open pins the xmin horizon, and the claim slows down until it ends (part 19's
soak). The heartbeat's look runs here against the real server, with a clock the
test moves instead of waiting a minute; the tests assert the log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from invariants import limit

from taskworker.processor.horizon import HELD_AFTER, HorizonWatch
from taskworker.store.database import Direct


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def report(db_url: str) -> Iterator[Any]:
    """A session that reads the table in a REPEATABLE READ transaction left open."""
    conn = psycopg2.connect(db_url, application_name="nightly report")
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT count(*) FROM tasks")
    yield conn
    conn.close()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskworker"]


def watcher_connection(url: str, **options: str) -> Any:
    conn = psycopg2.connect(url, **options)
    conn.autocommit = True
    return conn


def test_a_transaction_left_open_is_named_once_then_its_end(
        db_url: str, report: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taskworker")
    pid, user = report.get_backend_pid(), report.info.user
    clock = Clock()
    watch = HorizonWatch(clock)
    conn = watcher_connection(db_url)
    try:
        db = Direct(conn)
        watch.look(db)
        clock.now += HELD_AFTER - 1
        watch.look(db)
        assert lines(caplog) == []  # not yet a minute
        clock.now += 2
        watch.look(db)
        clock.now += 10
        watch.look(db)  # (named once)
        assert watch.stats() == {"held_seconds": HELD_AFTER + 11}  # the metrics' gauge
        assert lines(caplog) == [
            f"Vacuum held back for 1m01s by pid {pid} (user {user}, application nightly "
            "report, idle in transaction): dead rows of tasks cannot be removed and claims "
            "slow down until it ends (see idle_in_transaction_session_timeout and "
            "statement_timeout)"]
        report.commit()
        clock.now += 5
        watch.look(db)
        assert watch.stats() == {"held_seconds": 0.0}
        assert lines(caplog)[1:] == [
            f"Vacuum no longer held back by pid {pid} (user {user}, application nightly "
            "report, idle in transaction) (seen for 1m16s)"]
    finally:
        conn.close()


def test_short_transactions_are_never_named(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A session whose transactions come and go between two looks holds the horizon
    at a new xid each time: never the same holder for a minute."""
    caplog.set_level(logging.INFO, logger="taskworker")
    busy = psycopg2.connect(db_url, application_name="busy app")
    clock = Clock()
    watch = HorizonWatch(clock)
    conn = watcher_connection(db_url)
    try:
        db = Direct(conn)
        for _ in range(4):
            with busy.cursor() as cur:
                cur.execute("SELECT txid_current()")  # an xid, open until the commit
            watch.look(db)
            busy.commit()
            clock.now += HELD_AFTER / 2
        watch.look(db)
        assert lines(caplog) == []
    finally:
        busy.close()
        conn.close()


def test_a_role_without_privileges_can_look(
        db: Any, db_url: str, role: str, report: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """serve's role usually is no superuser: it sees who holds the horizon, but
    not what that session is doing (the line leaves the state out)."""
    caplog.set_level(logging.INFO, logger="taskworker")
    limit(db, role, 2)
    pid = report.get_backend_pid()
    clock = Clock()
    watch = HorizonWatch(clock)
    conn = watcher_connection(db_url, user=role)
    try:
        watch.look(Direct(conn))
        clock.now += HELD_AFTER
        watch.look(Direct(conn))
    finally:
        conn.close()
    assert lines(caplog)[0].startswith(
        f"Vacuum held back for 1m00s by pid {pid} (user {report.info.user}, application nightly "
        "report): ")


def test_a_server_that_hides_a_view_costs_one_line_and_nothing_else(
        db: Any, db_url: str, role: str, caplog: pytest.LogCaptureFixture) -> None:
    """A managed server may refuse a role one of the views looked at: one warning,
    no error for the heartbeat (whose renewals keep the leases), no more looks."""
    caplog.set_level(logging.INFO, logger="taskworker")
    limit(db, role, 2)
    with db.cursor() as cur:  # (this test's own database: its copy of the view)
        cur.execute(f"REVOKE SELECT ON pg_prepared_xacts FROM PUBLIC, {role}")
    watch = HorizonWatch(Clock())
    conn = watcher_connection(db_url, user=role)
    try:
        watch.look(Direct(conn))
        watch.look(Direct(conn))
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # the connection still serves
    finally:
        conn.close()
    assert lines(caplog) == ["Cannot see what holds vacuum back (permission denied for view "
                             "pg_prepared_xacts); not looking again"]
