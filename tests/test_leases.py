"""A process holds no claim it cannot keep: short of connection slots it waits
(saying so) instead of exiting or idling silently, claims only while its
heartbeat renews leases, and gives back a running task whose lease it cannot
renew, so that no task is charged a rescue while its process is alive.

The process runs as a role of its own (the `role` fixture) whose CONNECTION
LIMIT the tests move.
"""
from __future__ import annotations

import re
import signal
import time
from typing import Any

import psycopg2.extensions
import pytest
from invariants import (
    FAST,
    assert_all_done_once,
    connections_of,
    create_runs_table,
    handler_env,
    insert_tasks,
    install_completion_audit,
    limit,
    query,
    status_counts,
    stop_all,
    stray_traceback,
    tasks,
    wait_finished,
    wait_until,
)
from pgserver import free_port
from proc import ServeFactory
from scrapes import get, scrape, value

pytestmark = pytest.mark.slow  # (leases running out, reconnect backoffs: see tox.ini)

QUICK = {**FAST, "LEASE_SECONDS": "3", "FETCH_INTERVAL": "0.2"}


def test_a_process_short_of_connections_waits_and_never_rescues_its_own(
        db_url: str, db: Any, role: str, serve: ServeFactory) -> None:
    """No slot at all at start: serve waits, saying why, instead of exiting. Two
    slots, fewer than the three it needs to claim: it steps back instead of
    sitting on two, and claims nothing. Enough slots: everything finishes, each
    task once, none rescued."""
    install_completion_audit(db)
    query(db, f"GRANT ALL ON completions TO {role}")
    ids = insert_tasks(db, [f"short of slots {n}" for n in range(12)])
    url = psycopg2.extensions.make_dsn(db_url, user=role)
    # The demo handler (a one-second sleep): it opens no connection of its own.
    p = serve(url, env={**QUICK, "TASK_MIN_SECONDS": "1", "TASK_MAX_SECONDS": "1"})
    p.wait_for(r'too many connections for role "\w+"; waiting for a free connection slot')
    # (It waits rather than exits: the waits below fail at once if it exits.)

    limit(db, role, 2)  # the check passes; then two of the four services get a slot
    p.wait_for(r"No connection slot for \w+: stepping back", timeout=20)
    time.sleep(4)  # more than a lease: a lease not renewed would have run out by now
    assert p.proc.poll() is None, p.output()
    assert status_counts(db) == {"pending": len(ids)}, p.output()

    limit(db, role, 10)
    wait_finished(db, 60, [p])
    stop_all([p], signal.SIGINT)

    rows = assert_all_done_once(db, ids)
    assert all(r["rescues"] == 0 for r in rows.values()), rows
    out = p.output()
    assert "Rescued" not in out, out
    assert re.search(r'Database connection lost \(\w+\): .*too many connections for role', out)
    assert not stray_traceback(out)


def test_a_running_task_whose_lease_cannot_be_renewed_is_given_back(
        db_url: str, db: Any, role: str, serve: ServeFactory) -> None:
    """The heartbeat's connection is cut and cannot come back (no slot): the lease
    guard stops the running tasks before their leases run out and gives them
    back, untouched; they run again once the heartbeat is back, without a rescue
    and without an attempt counted for the stopped run."""
    install_completion_audit(db)
    create_runs_table(db)
    query(db, f"GRANT ALL ON runs, completions TO {role}")
    ids = insert_tasks(db, [f"long {n}" for n in range(3)])
    limit(db, role, 10)
    url = psycopg2.extensions.make_dsn(db_url, user=role)
    port = free_port()
    p = serve(url, env=handler_env("recording", **QUICK, TEST_SLEEP="5", WORKER_COUNT="3",
                                   METRICS_PORT=str(port), HEALTH_MAX_DOWNTIME="4"))
    wait_until(lambda: len(re.findall(r"Processing task ID", p.output())) == 3, 20,
               "three tasks running", [p], fail_on_exit=True)
    wait_until(lambda: len(connections_of(db, role)) == 5, 10,  # every service connected
               "five connections (four services, the metrics sampler)", [p], fail_on_exit=True)
    limit(db, role, 0)  # nothing can reconnect now
    query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
              "WHERE usename = %s AND application_name = 'taskworker heartbeat'", (role,))
    for task_id in ids:
        p.wait_for(rf"Task ID: {task_id} stopped: its lease would run out unrenewed; "
                   r"giving it back", timeout=10)
    wait_until(lambda: all(r["status"] == "pending" for r in tasks(db).values()), 10,
               "the tasks given back to pending", [p], fail_on_exit=True)
    assert all(r["attempts"] == 0 and r["rescues"] == 0 for r in tasks(db).values())
    assert query(db, "SELECT count(*) FROM runs") == [(0,)]  # no run went to its end
    # While leases cannot be renewed, nothing is claimed again: not until the
    # process itself reports its heartbeat's connection down for HEALTH_MAX_DOWNTIME
    # (more than a lease, so well after the tasks were given back).
    fetched = p.output().count("Fetched")
    wait_until(lambda: "database connection (heartbeat) down" in get(port, "/healthz")[1], 20,
               "/healthz to report the heartbeat's connection down", [p], fail_on_exit=True)
    assert all(r["status"] == "pending" for r in tasks(db).values()), tasks(db)
    assert p.output().count("Fetched") == fetched, p.output()

    limit(db, role, 10)
    wait_finished(db, 60, [p])
    m = scrape(port)
    stop_all([p], signal.SIGINT)
    rows = assert_all_done_once(db, ids)
    assert all((r["attempts"], r["rescues"]) == (1, 0) for r in rows.values()), rows
    assert value(m, "taskworker_tasks_given_back_total") == 3
    assert value(m, "taskworker_tasks_finished_total", status="done") == 3
    assert value(m, "taskworker_tasks_rescued_total") == 0
    assert "Rescued" not in p.output()
