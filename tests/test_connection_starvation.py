"""Processes that share a connection limit take turns instead of starving each
other: a process that cannot open a connection it needs to claim closes what it
holds and tries again after a random wait, so that some process always has the
connections it needs and works.

Two `serve` processes connect as the `role` fixture's role, each through a
loopback proxy of its own (tests/tcpproxy.py) that sets new connections up
slowly, as scram over a distant link does: connection attempts that overlap
arrive together. (With fast set-ups, the process that starts first has all it
needs before the other connects, and nothing shows.)
"""
from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2.extensions
from invariants import (
    DONE_LINE,
    FAST,
    RESCUED_LINE,
    assert_all_done_once,
    connections_of,
    insert_tasks,
    install_completion_audit,
    limit,
    query,
    status_counts,
    stop_all,
    stray_traceback,
    tail,
    wait_finished,
    wait_until,
)
from proc import ServeFactory, ServeProcess
from tcpproxy import Proxy

SLOW_SET_UP = 0.3  # seconds each new connection takes to reach the server
# Short leases, so that a lease left unrenewed runs out (and could be rescued)
# within the test; connection attempts held by a proxy do not give up meanwhile.
SETTINGS = {**FAST, "LEASE_SECONDS": "3", "FETCH_INTERVAL": "0.2", "CONNECT_TIMEOUT": "60"}


def test_two_processes_short_of_connections_take_turns_instead_of_starving(
        db_url: str, db: Any, role: str, serve: ServeFactory) -> None:
    """A limit of 4 for two processes that need 3 each to claim (4 with the
    listener). The proxies let each open two connections only, until both
    have two (at start a process opens its heartbeat's, then its three others
    at once: slow set-ups that overlap leave them so), then let everything
    through: no slot is free for what they still need. One of them steps back,
    the other gets what it needs and runs the tasks; none is rescued."""
    install_completion_audit(db)
    query(db, f"GRANT ALL ON completions TO {role}")
    ids = insert_tasks(db, [f"short of slots {n}" for n in range(1000)])
    limit(db, role, 4)
    with two_processes(db_url, role, serve, SETTINGS, max_open=2) as (procs, proxies):
        wait_until(lambda: all(p.forwarding == 2 and p.waiting for p in proxies)
                   and len(connections_of(db, role)) == 4, 30,
                   lambda: f"two connections each (now {connections_of(db, role)})", procs,
                   fail_on_exit=True)
        held = sorted(connections_of(db, role))  # (both heartbeats, and one more each)
        for proxy in proxies:
            proxy.open_at_most(None)
        wait_finished(db, 60, procs)
        stop_all(procs, signal.SIGINT)

    rows = assert_all_done_once(db, ids)
    assert_none_rescued(rows, procs)
    assert any("stepping back" in p.output() for p in procs), (held, logs(procs))


def test_below_what_a_process_needs_they_finish_their_work_by_turns(
        db_url: str, db: Any, role: str, serve: ServeFactory) -> None:
    """Two busy processes; then a limit of 2 (neither can have the three it
    needs to claim), their connections ended, for 15 s (five leases). Each
    gets its heartbeat and writing lane in turn and finishes, or gives back,
    what it holds; nothing is claimed, no lease runs out unrenewed while its
    process could have renewed it, none is rescued. A limit of 8 again: they
    run the rest."""
    install_completion_audit(db)
    query(db, f"GRANT ALL ON completions TO {role}")
    ids = insert_tasks(db, [f"busy {n}" for n in range(400)])
    limit(db, role, 8)
    busy = {**SETTINGS, "TASK_MIN_SECONDS": "0.1", "TASK_MAX_SECONDS": "0.3"}
    with two_processes(db_url, role, serve, busy) as (procs, _):
        wait_until(lambda: all(re.search(DONE_LINE, p.output()) for p in procs), 30,
                   "both processes running tasks", procs, fail_on_exit=True)
        limit(db, role, 2)
        query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
              (role,))
        time.sleep(15)
        held = query(db, "SELECT id, locked_by, locked_until - now() FROM tasks "
                         "WHERE status = 'in_progress'")
        assert not held, (held, status_counts(db), logs(procs))
        limit(db, role, 8)
        wait_finished(db, 60, procs)
        stop_all(procs, signal.SIGINT)

    rows = assert_all_done_once(db, ids)
    assert_none_rescued(rows, procs)


@contextmanager
def two_processes(db_url: str, role: str, serve: ServeFactory, env: dict[str, str],
                  max_open: int | None = None,
                  ) -> Iterator[tuple[list[ServeProcess], list[Proxy]]]:
    """Two `serve` processes connecting as `role`, each through a proxy of its
    own (SLOW_SET_UP, and `max_open`)."""
    dsn = psycopg2.extensions.parse_dsn(db_url)
    target = (dsn.get("host", "127.0.0.1"), int(dsn.get("port", 5432)))
    proxies = [Proxy(*target, connect_delay=SLOW_SET_UP, max_open=max_open) for _ in range(2)]
    try:
        yield [serve(psycopg2.extensions.make_dsn(db_url, user=role, host="127.0.0.1",
                                                  port=proxy.port, sslmode="disable"),
                     env=env) for proxy in proxies], proxies
    finally:
        for proxy in proxies:
            proxy.close()


def assert_none_rescued(rows: dict[int, dict[str, Any]], procs: list[ServeProcess]) -> None:
    rescued = {i: r["rescues"] for i, r in rows.items() if r["rescues"]}
    assert not rescued, (rescued, logs(procs))
    assert not any(re.search(RESCUED_LINE, p.output()) for p in procs), logs(procs)
    assert not any(stray_traceback(p.output()) for p in procs), logs(procs)


def logs(procs: list[ServeProcess]) -> str:
    """The end of each process's log, without the lines of each task."""
    return "\n".join(f"--- serve pid {p.pid} (exit {p.proc.poll()}):\n"
                     + tail("\n".join(line for line in p.output().splitlines()
                                      if "Task ID" not in line and "Fetched" not in line))
                     for p in procs)
