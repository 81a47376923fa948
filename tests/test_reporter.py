"""One process exports the gauges about the whole table (queue depth, backlog by
queue and by task name) for every process, chosen through the database (the
lease row of taskworker_metrics_reporter): with several `serve` processes on one
database, the dashboard queries of the metrics reference count the table once. Through a clean
handover (SIGINT: the row is handed back), a frozen reporter (the row runs out;
woken, it gives way), a reporter that cannot renew its row (it stops exporting
by itself when the row runs out, while its statement still hangs), behind
PgBouncer in transaction mode (where a session advisory lock would be shared by
every client of one server connection), and in a real Prometheus when one is
installed.
"""
from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import psycopg2
import pytest
from invariants import query, status_counts, stray_traceback, wait_until
from pgbouncer import available as pgbouncer_available
from pgbouncer import bouncer
from pgserver import free_port
from proc import ServeFactory, ServeProcess
from prometheus import SCRAPE_EVERY, prometheus
from prometheus import available as prometheus_available
from scrapes import get, scrape, value

METRICS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "metrics.md"
# taskworker/web/table_metrics.py's (not imported: no gevent in the pytest process):
DEPTH_EVERY = 5.0  # seconds between samples, each after a claim of the row
REPORTER_TTL = 15.0  # seconds the row is held past a renewal
# The dashboard queries the metrics reference shows, run here on the processes' scrapes.
DEPTH_QUERY = "max by (status) (taskworker_queue_depth)"
BACKLOG_QUERY = "max by (queue, state) (taskworker_tasks_by_queue)"
QUICK = {"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0",
         "LOG_LEVEL": "INFO"}
REPORTING = "Reporting the table's metrics (queue depth, backlog) for every process"
STATUSES = ("pending", "in_progress", "done", "error", "cancelled")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fill(db: Any) -> None:
    """Finished tasks, and pending ones that none of these processes will claim
    (due in an hour, or in a queue nobody serves), so the counts hold still."""
    query(db, "INSERT INTO tasks (payload, status) SELECT 'old', CASE WHEN n % 10 = 0 THEN "
              "'error' WHEN n % 7 = 0 THEN 'cancelled' ELSE 'done' END "
              "FROM generate_series(1, 60) n RETURNING NULL")
    query(db, "INSERT INTO tasks (payload, run_at) SELECT 'later', now() + interval '1 hour' "
              "FROM generate_series(1, 4) RETURNING NULL")
    query(db, "INSERT INTO tasks (payload, queue) SELECT 'nobody', 'unserved' "
              "FROM generate_series(1, 3) RETURNING NULL")


def table(db: Any) -> dict[tuple[str, ...], float]:
    """What DEPTH_QUERY must answer: the table's tasks by status, each once."""
    counts = status_counts(db)
    return {(s,): float(counts.get(s, 0)) for s in STATUSES}


def backlog(served: Iterable[str]) -> dict[tuple[str, ...], float]:
    """What BACKLOG_QUERY must answer: the pending tasks by queue, and 0 for the
    empty queues `served` by a live process, whichever process reports."""
    return {("default", "pending"): 0.0, ("default", "scheduled"): 4.0,
            ("default", "running"): 0.0, ("unserved", "pending"): 3.0,
            ("unserved", "scheduled"): 0.0, ("unserved", "running"): 0.0,
            **{(q, s): 0.0 for q in served for s in ("pending", "scheduled", "running")}}


def by(scrapes: Iterable[Samples], name: str, labels: tuple[str, ...],
       agg: Callable[[list[float]], float]) -> dict[tuple[str, ...], float]:
    """`agg by (labels) (name)` over the processes' scrapes, as PromQL computes it."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for samples in scrapes:
        for (metric, pairs), v in samples.items():
            if metric == name:
                found = dict(pairs)
                groups.setdefault(tuple(found[label] for label in labels), []).append(v)
    return {key: agg(values) for key, values in groups.items()}


def start(serve: ServeFactory, db_url: str, **env: str) -> tuple[ServeProcess, int]:
    port = free_port()
    p = serve(db_url, env={**QUICK, "METRICS_PORT": str(port), **env})
    p.wait_for(rf"Serving metrics on http://127\.0\.0\.1:{port}/metrics$")
    return p, port


def holder(port: int) -> str:
    """The process's holder name (its row's, its leases'), as /healthz says it."""
    return json.loads(get(port, "/healthz")[1])["holder"]


def reported_once(db: Any, ports: list[int], served: Iterable[str] = ("mail", "images"),
                  ) -> tuple[int, list[Samples]] | None:
    """When exactly one of the processes on `ports` reports and the dashboard
    queries over all of them count the table once, `served` being the empty queues
    that live processes serve: (the reporter's port, scrapes)."""
    scrapes = [scrape(port) for port in ports]
    flags = [value(s, "taskworker_table_reporter") for s in scrapes]
    if sorted(flags) != [0] * (len(ports) - 1) + [1]:
        return None
    want = table(db)
    for agg in (max, sum):  # (sum too: one process exports them)
        if by(scrapes, "taskworker_queue_depth", ("status",), agg) != want:
            return None
        if by(scrapes, "taskworker_tasks_by_queue", ("queue", "state"), agg) != backlog(served):
            return None
    for s, flag in zip(scrapes, flags, strict=True):  # the others export none of it
        if not flag:
            assert not [name for name, _ in s if name.startswith(
                ("taskworker_queue_depth", "taskworker_tasks_by_", "taskworker_oldest_"))], s
    return ports[flags.index(1)], scrapes


def row(db: Any) -> list[tuple[str, bool]]:
    return query(db, "SELECT holder, locked_until > now() FROM taskworker_metrics_reporter")


def stop(p: ServeProcess) -> None:
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()[-4000:]
    assert not stray_traceback(p.output()), p.output()[-4000:]


def test_the_reference_shows_the_queries_tested_here() -> None:
    text = METRICS_PAGE.read_text()
    assert DEPTH_QUERY in text and BACKLOG_QUERY in text


def test_two_processes_count_the_table_once_and_hand_over_at_shutdown(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    fill(db)
    a, port_a = start(serve, db_url, QUEUES="default,mail")
    b, port_b = start(serve, db_url, QUEUES="default,images")
    procs, ports = {port_a: a, port_b: b}, [port_a, port_b]
    reporter, _ = wait_until(lambda: reported_once(db, ports), 20,
                             "one reporter, and the table counted once", [a, b],
                             fail_on_exit=True)
    other = port_b if reporter == port_a else port_a
    assert row(db) == [(holder(reporter), True)]
    assert procs[reporter].output().count(REPORTING) == 1
    assert REPORTING not in procs[other].output()

    # The reporter shuts down: it hands the row back, and the other takes it at
    # its next sample instead of waiting for the row to run out.
    stop(procs[reporter])
    stopped = time.monotonic()
    assert row(db) in ([], [(holder(other), True)])
    served = ["images" if other == port_b else "mail"]  # (the stopped one's row is gone)
    wait_until(lambda: reported_once(db, [other], served), REPORTER_TTL + 10,
               "the other process to report", [procs[other]], fail_on_exit=True)
    assert time.monotonic() - stopped < REPORTER_TTL - DEPTH_EVERY
    assert row(db) == [(holder(other), True)]
    assert REPORTING in procs[other].output()
    stop(procs[other])
    assert row(db) == []


@pytest.mark.slow
def test_a_frozen_reporter_is_replaced_once_its_row_runs_out_and_stands_down_after(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """SIGSTOP: to the database, as a reporter killed outright or cut off (no
    renewal); SIGCONT then shows it giving way to the one that took over."""
    fill(db)
    a, port_a = start(serve, db_url, QUEUES="default,mail")
    wait_until(lambda: value(scrape(port_a), "taskworker_table_reporter") == 1, 20,
               "a to report", [a], fail_on_exit=True)
    b, port_b = start(serve, db_url, QUEUES="default,images")
    reporter, _ = wait_until(lambda: reported_once(db, [port_a, port_b]), 20,
                             "both processes in the counts", [a, b], fail_on_exit=True)
    assert reporter == port_a  # (b asks for a row a keeps)
    a_holder = holder(port_a)
    a.signal(signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        assert row(db) == [(a_holder, True)]
        wait_until(lambda: reported_once(db, [port_b]), REPORTER_TTL + 15,
                   "b to report once a's row ran out", [b], fail_on_exit=True)
        waited = time.monotonic() - frozen
        # Not before the row ran out: a renewed it at most DEPTH_EVERY before.
        assert waited > REPORTER_TTL - DEPTH_EVERY - 1, waited
        assert row(db) == [(holder(port_b), True)]
    finally:
        a.signal(signal.SIGCONT)
    # a wakes up: whether its scrape or its sampler runs first, it exports nothing
    # of the table any more (its clock says the row ran out; the row says b).
    assert reported_once(db, [port_a, port_b]) is not None
    assert value(scrape(port_a), "taskworker_table_reporter") == 0
    a.wait_for(r"Another process reports the table's metrics now$", timeout=DEPTH_EVERY + 5)
    assert reported_once(db, [port_a, port_b]) == (port_b, ANY)
    for p in (a, b):
        stop(p)


@pytest.mark.slow
def test_a_reporter_that_cannot_renew_its_row_stops_exporting_when_it_runs_out(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """The row locked by another transaction: the reporter's renewal waits on it
    (and is sent again after each STATEMENT_TIMEOUT), as it would on a database
    that stopped answering. It cannot learn that its row ran out, so it stops
    exporting the table's gauges by its own clock; then no process exports them
    (a gap, never a double count) until the row can be written again."""
    fill(db)
    p, port = start(serve, db_url, STATEMENT_TIMEOUT="3", QUEUES="default,mail,images")
    wait_until(lambda: reported_once(db, [port]), 20, "p to report", [p], fail_on_exit=True)
    with closing(psycopg2.connect(db_url)) as locker, locker.cursor() as cur:
        cur.execute("SELECT 1 FROM taskworker_metrics_reporter FOR UPDATE")
        locked = time.monotonic()
        try:
            wait_until(lambda: value(scrape(port), "taskworker_table_reporter") == 0,
                       REPORTER_TTL + 5, "p to stop reporting", [p], fail_on_exit=True)
            assert time.monotonic() - locked > REPORTER_TTL - DEPTH_EVERY - 1
            samples = scrape(port)
            assert not [name for name, _ in samples if name.startswith(
                ("taskworker_queue_depth", "taskworker_tasks_by_", "taskworker_oldest_"))]
            assert value(samples, "taskworker_tasks_claimed_total") == 0  # the rest stays
            assert re.search(r"Statement interrupted \(metrics\): canceling statement due to "
                             r"statement timeout; retrying", p.output()), p.output()
        finally:
            locker.rollback()
    # Its row never changed hands: the renewal goes through and it reports again.
    wait_until(lambda: reported_once(db, [port]), 20, "p to report again", [p],
               fail_on_exit=True)
    stop(p)


@pytest.mark.slow
@pytest.mark.skipif(not pgbouncer_available(), reason="pgbouncer is not installed "
                    "(.ci/run installs it: apt-get install pgbouncer)")
def test_one_reporter_behind_pgbouncer_sharing_one_server_connection(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """Two processes through PgBouncer in transaction mode with one server
    connection for all their statements: a session advisory lock taken there
    would be held by both; the lease row is taken by one."""
    fill(db)
    with bouncer(db_url, default_pool_size=1) as via:
        pooled = via(db_url)
        env = {"LISTEN": "false", "FETCH_INTERVAL": "0.5"}
        a, port_a = start(serve, pooled, QUEUES="default,mail", **env)
        b, port_b = start(serve, pooled, QUEUES="default,images", **env)
        reporter, _ = wait_until(lambda: reported_once(db, [port_a, port_b]), 30,
                                 "one reporter, and the table counted once", [a, b],
                                 fail_on_exit=True)
        # Still one two samples later (every process asks before each sample; the
        # reporter's renewal of its row marks each of its samples).
        renewals = {query(db, "SELECT locked_until FROM taskworker_metrics_reporter")[0][0]}

        def renewed_twice() -> bool:
            renewals.update(r[0] for r in query(
                db, "SELECT locked_until FROM taskworker_metrics_reporter"))
            return len(renewals) >= 3

        wait_until(renewed_twice, 4 * DEPTH_EVERY, "two more samples by the reporter", [a, b],
                   fail_on_exit=True)
        assert reported_once(db, [port_a, port_b]) is not None
        assert row(db) == [(holder(reporter), True)]
        # One server connection for both processes' statements (and one of ours).
        assert query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND pid <> pg_backend_pid()") == [(1,)]
        for p in (a, b):
            stop(p)


@pytest.mark.slow
@pytest.mark.skipif(not prometheus_available(), reason="prometheus is not installed "
                    "(.ci/run installs it: apt-get install prometheus)")
def test_the_readme_query_in_prometheus_through_a_handover(
        db_url: str, db: Any, serve: ServeFactory, tmp_path: Path) -> None:
    """A real Prometheus scraping two processes every second: the metrics reference's query
    answers the table's counts, before, during and after the reporter's shutdown
    (during it, Prometheus may still hold the old reporter's last sample beside the
    new one's for a scrape: `max` is not fooled by that)."""
    fill(db)
    want = {(("status", s),): v for (s,), v in table(db).items()}
    a, port_a = start(serve, db_url, QUEUES="default,mail")
    b, port_b = start(serve, db_url, QUEUES="default,images")
    procs = {port_a: a, port_b: b}
    with prometheus([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], tmp_path) as instant:
        wait_until(lambda: instant("sum(up)") == {(): 2.0}  # (both scraped)
                   and instant(DEPTH_QUERY) == want
                   and instant("sum by (status) (taskworker_queue_depth)") == want
                   and instant("sum(taskworker_table_reporter)") == {(): 1.0}, 30,
                   "Prometheus to answer the table's counts", [a, b], fail_on_exit=True)
        [reporter] = [int(dict(labels)["instance"].rsplit(":", 1)[1]) for labels, v in
                      instant("taskworker_table_reporter").items() if v == 1]
        other = port_b if reporter == port_a else port_a
        stop(procs[reporter])
        deadline = time.monotonic() + REPORTER_TTL + 10
        answers: list[dict] = []

        def reporting() -> list[str]:
            return [dict(labels)["instance"] for labels in
                    instant("taskworker_table_reporter == 1")]

        while reporting() != [f"127.0.0.1:{other}"] and time.monotonic() < deadline:
            answers.append(instant(DEPTH_QUERY))
            assert answers[-1] in ({}, want), answers  # a gap at most, never a double count
            time.sleep(SCRAPE_EVERY / 4)
        wait_until(lambda: instant(DEPTH_QUERY) == want
                   and instant("sum by (status) (taskworker_queue_depth)") == want
                   and instant("sum(taskworker_table_reporter)") == {(): 1.0}
                   and instant("count(taskworker_queue_depth)") == {(): float(len(STATUSES))},
                   20, "Prometheus to answer from the other process", [procs[other]],
                   fail_on_exit=True)
        stop(procs[other])
