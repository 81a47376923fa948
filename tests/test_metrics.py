"""Metrics, health and JSON logs of `taskworker serve`, seen from outside: a
Prometheus scrape whose counters match the table, the process and build series
dashboards expect (and Prometheus's linter, promtool, on a scrape), /healthz
turning 503 when the process's backends keep being terminated or its database
stops taking connections (and 200 again after), and bad metrics settings
refused at start. One process reporting the table for all: test_reporter.py.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import query, stray_traceback, wait_until
from pgserver import UNREACHABLE_URL, free_port
from proc import ServeFactory, ServeProcess, run_cli
from prometheus_client.samples import Sample
from psycopg2.sql import SQL, Identifier
from scrapes import families, get, scrape, value

import taskworker
from taskworker.settings import load

QUICK = {"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0"}



def start(serve: ServeFactory, db_url: str, port: int, **env: str) -> ServeProcess:
    p = serve(db_url, env={**QUICK, "METRICS_PORT": str(port), **env})
    p.wait_for(rf"Serving metrics on http://127\.0\.0\.1:{port}/metrics$")
    return p


def stop(p: ServeProcess) -> None:
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()[-4000:]
    assert not stray_traceback(p.output()), p.output()[-4000:]


# --- the scrape


def test_scrape_during_a_run_matches_the_table(db_url: str, db: Any,
                                               serve: ServeFactory) -> None:
    port = free_port()
    p = start(serve, db_url, port, TASK_MIN_SECONDS="0.005", TASK_MAX_SECONDS="0.02",
              TASK_FAILURE_RATE="0.3", MAX_RETRIES="1", RETRY_BACKOFF="0")
    before = scrape(port)
    assert value(before, "taskworker_tasks_claimed_total") == 0
    assert value(before, "taskworker_tasks_finished_total", status="done") == 0
    assert value(before, "taskworker_healthy") == 1
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nothing-here")[0] == 404

    query(db, "INSERT INTO tasks (payload) SELECT 'word ' || n FROM generate_series(1, 200) n"
              " RETURNING id")
    # Scrapes while the tasks run: counters only ever grow, and never run ahead.
    scrapes = [before]

    def all_finished() -> bool:
        now = scrape(port)
        for key in ("taskworker_tasks_claimed_total", "taskworker_task_duration_seconds_count"):
            assert value(now, key) >= value(scrapes[-1], key)
        finished = sum(value(now, "taskworker_tasks_finished_total", status=s)
                       for s in ("done", "error"))
        assert finished <= value(now, "taskworker_tasks_claimed_total")
        scrapes.append(now)
        return finished == 200

    wait_until(all_finished, 40, "200 finished tasks in the scrape", [p], fail_on_exit=True)
    assert len(scrapes) > 2  # at least one scrape while the tasks ran

    counts = dict(query(db, "SELECT status, count(*) FROM tasks GROUP BY status"))
    runs, retried = query(db, "SELECT sum(attempts), sum(attempts - 1) FROM tasks")[0]
    assert counts.get("done", 0) + counts.get("error", 0) == 200, counts
    m = scrape(port)
    assert value(m, "taskworker_tasks_finished_total", status="done") == counts.get("done", 0)
    assert value(m, "taskworker_tasks_finished_total", status="error") == counts.get("error", 0)
    assert counts.get("error", 0) > 0 and retried > 0  # the run did fail and retry
    assert value(m, "taskworker_task_retries_total") == retried
    assert value(m, "taskworker_tasks_claimed_total") == runs
    assert value(m, "taskworker_task_duration_seconds_count") == runs
    assert 0 < value(m, "taskworker_task_duration_seconds_sum") < runs * 5
    for name in ("taskworker_lease_losses_total", "taskworker_tasks_rescued_total",
                 "taskworker_tasks_given_back_total", "taskworker_tasks_in_flight",
                 "taskworker_workers_busy", "taskworker_outcomes_unwritten"):
        assert value(m, name) == 0, name
    assert value(m, "taskworker_notifications_total") >= 1  # the INSERT's NOTIFY woke it
    for conn in ("fetcher", "heartbeat", "completer", "listener", "metrics"):
        assert value(m, "taskworker_database_reconnects_total", connection=conn) == 0
    assert value(m, "taskworker_workers") == 5
    # (its own claims' snapshots come and go: at most a beat, never a minute)
    assert 0 <= value(m, "taskworker_vacuum_held_seconds") < 60

    # The queue depth is sampled every few seconds: wait for a sample after the run.
    def depth_settled() -> dict | None:
        m = scrape(port)
        depth = {s: value(m, "taskworker_queue_depth", status=s)
                 for s in ("pending", "in_progress", "done", "error", "cancelled")}
        want = {"pending": 0, "in_progress": 0, "done": counts.get("done", 0),
                "error": counts.get("error", 0), "cancelled": 0}
        return depth if depth == want else None

    wait_until(depth_settled, 15, "the queue depth sample after the run", [p], fail_on_exit=True)
    stop(p)


def test_queue_depth_of_a_large_table_is_estimated(db_url: str, db: Any,
                                                   serve: ServeFactory) -> None:
    # Over 16 MB of finished tasks: the sampler estimates them from the planner's
    # statistics instead of counting them; pending tasks are still counted exactly.
    query(db, "INSERT INTO tasks (payload, status, run_at)"
              " SELECT repeat('x', 200), CASE WHEN n % 4 = 0 THEN 'error' ELSE 'done' END,"
              " now() FROM generate_series(1, 80000) n RETURNING NULL")
    query(db, "INSERT INTO tasks (payload, run_at) SELECT 'later', now() + interval '1 hour'"
              " FROM generate_series(1, 7) RETURNING NULL")
    query(db, "ANALYZE tasks")
    pages = query(db, "SELECT pg_relation_size('tasks') / 8192")[0][0]
    assert pages > 2048, pages  # (EXACT_PAGES in taskworker/web/table_metrics.py)
    port = free_port()
    p = start(serve, db_url, port)

    def sampled() -> dict | None:
        m = scrape(port)
        depth = {s: v for (name, labels), v in m.items()
                 if name == "taskworker_queue_depth" for (_, s) in labels}
        return depth if "done" in depth else None

    depth = wait_until(sampled, 15, "a queue depth sample", [p], fail_on_exit=True)
    assert depth["pending"] == 7 and depth["in_progress"] == 0, depth
    assert depth["done"] == pytest.approx(60000, rel=0.1), depth
    assert depth["error"] == pytest.approx(20000, rel=0.1), depth
    assert depth["cancelled"] == 0, depth
    stop(p)


def test_scrape_shows_the_process_and_the_build_and_no_created_series(
        db_url: str, serve: ServeFactory) -> None:
    """What the standard process and build dashboards read, compared with what
    /proc says of the serve process; and no `_created` series (one more per
    histogram or counter for Prometheus to store), in either format Prometheus
    asks for."""
    port = free_port()
    started = time.time()
    p = start(serve, db_url, port)
    m = families(port)
    ticks = os.sysconf("SC_CLK_TCK")

    def one(name: str, kind: str) -> Sample:
        assert m[name].type == kind, (name, m[name].type)
        [sample] = m[name].samples
        return sample

    rss = one("process_resident_memory_bytes", "gauge").value
    rss_now = int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p.pid}/status").read_text(),
                            re.MULTILINE)[1]) * 1024
    assert rss == pytest.approx(rss_now, rel=0.25) and rss > 10_000_000, (rss, rss_now)
    cpu = one("process_cpu_seconds", "counter")  # (the parser names a counter without _total)
    assert cpu.name == "process_cpu_seconds_total"
    utime, stime = map(int, Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1]
                       .split()[11:13])
    assert 0 < cpu.value <= (utime + stime) / ticks + 0.01, (cpu.value, utime, stime)
    fds = one("process_open_fds", "gauge").value
    assert abs(fds - len(os.listdir(f"/proc/{p.pid}/fd"))) <= 2 and fds >= 6, fds  # 5 sockets+
    assert one("process_max_fds", "gauge").value >= fds
    assert started - 1 <= one("process_start_time_seconds", "gauge").value <= time.time()

    build = one("taskworker_build_info", "gauge")
    assert (build.labels, build.value) == ({"version": taskworker.__version__}, 1)
    python = one("python_info", "gauge")
    assert (python.labels["version"], python.value) == (platform.python_version(), 1)
    assert m["taskworker_task_duration_seconds"].type == "histogram"

    openmetrics = families(port, openmetrics=True)
    assert openmetrics["taskworker_build"].type == "info"
    for scraped in (m, openmetrics):
        created = [s.name for family in scraped.values() for s in family.samples
                   if s.name.endswith("_created")]
        assert not created and not [name for name in scraped if name.endswith("_created")], \
            created
    stop(p)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (.ci/run installs it: apt-get install "
                           "prometheus)")
def test_promtool_finds_nothing_wrong_in_a_scrape(db_url: str, db: Any,
                                                   serve: ServeFactory) -> None:
    """Prometheus's own linter on a scrape taken after a few tasks ran (every
    series present: histogram buckets, per-queue and per-name gauges)."""
    port = free_port()
    p = start(serve, db_url, port, QUEUES="default,reports")
    query(db, "INSERT INTO tasks (payload) SELECT 'word ' || n FROM generate_series(1, 20) n"
              " RETURNING id")
    wait_until(lambda: scrape(port).get(("taskworker_queue_depth", (("status", "done"),))) == 20,
               20, "the 20 tasks done in the queue depth", [p], fail_on_exit=True)
    text = get(port, "/metrics")[1]
    assert "taskworker_tasks_by_queue{" in text and "taskworker_task_duration_seconds_bucket{" \
        in text
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
    stop(p)


# --- /healthz


def healthz(port: int) -> tuple[int, dict]:
    status, body = get(port, "/healthz")
    return status, json.loads(body)


def test_healthz_fails_while_backends_keep_being_terminated(db_url: str, db: Any,
                                                            serve: ServeFactory) -> None:
    port = free_port()
    p = start(serve, db_url, port, HEALTH_MAX_DOWNTIME="2", FETCH_INTERVAL="0.5")
    status, body = healthz(port)
    assert (status, body["status"]) == (200, "ok"), body

    stop_killing = threading.Event()

    def kill_loop() -> None:
        while not stop_killing.is_set():
            query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                      " AND application_name LIKE 'taskworker %%'")
            time.sleep(0.02)

    killer = threading.Thread(target=kill_loop, daemon=True)
    killer.start()
    try:
        status, body = wait_until(lambda: (r := healthz(port))[0] == 503 and r, 20,
                                  "/healthz to fail while backends are terminated", [p],
                                  fail_on_exit=True)
    finally:
        stop_killing.set()
        killer.join(5)
    assert body["status"] == "unhealthy"
    assert any("database connection" in problem for problem in body["problems"]), body
    assert value(scrape(port), "taskworker_healthy") == 0

    # Left alone, it reconnects and is healthy again once the losses are older
    # than HEALTH_MAX_DOWNTIME; it kept running all along.
    wait_until(lambda: healthz(port)[0] == 200, 20, "/healthz to recover", [p], fail_on_exit=True)
    m = scrape(port)
    assert sum(v for (name, _), v in m.items()
               if name == "taskworker_database_reconnects_total") > 0
    assert "Database connection lost" in p.output()
    stop(p)


def test_healthz_watches_the_pruners_connection_too(db_url: str, db: Any,
                                                   serve: ServeFactory) -> None:
    """Every connection of the process counts for /healthz, the pruner's included
    (PRUNE_AFTER: it prunes every second here, and its backend is terminated each
    time until /healthz names it)."""
    query(db, "INSERT INTO tasks (payload, status, updated_at)"
              " VALUES ('old', 'done', now() - interval '1 day')")
    port = free_port()
    p = start(serve, db_url, port, PRUNE_AFTER="1s", HEALTH_MAX_DOWNTIME="20")
    wait_until(lambda: value(scrape(port), "taskworker_tasks_pruned_total") == 1, 20,
               "the old task pruned", [p], fail_on_exit=True)
    assert query(db, "SELECT count(*) FROM tasks") == [(0,)]

    def pruner_reported() -> dict | None:
        query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND application_name = 'taskworker pruner'")
        status, body = healthz(port)
        return body if status == 503 else None

    body = wait_until(pruner_reported, 30, "/healthz to name the pruner's connection", [p],
                      interval=0.2, fail_on_exit=True)
    assert [problem for problem in body["problems"] if "(pruner)" in problem], body
    assert all("(pruner)" in problem for problem in body["problems"]), body  # only the pruner's
    assert value(scrape(port), "taskworker_database_reconnects_total", connection="pruner") >= 4
    stop(p)


def test_healthz_fails_while_the_database_refuses_connections(pg_base_url: str, db_url: str,
                                                              serve: ServeFactory) -> None:
    dbname = psycopg2.extensions.parse_dsn(db_url)["dbname"]
    admin = psycopg2.connect(pg_base_url, connect_timeout=10)
    admin.autocommit = True
    port = free_port()
    p = start(serve, db_url, port, HEALTH_MAX_DOWNTIME="1", FETCH_INTERVAL="0.5")
    assert healthz(port)[0] == 200
    try:
        # Stop the database taking connections, then drop the ones it has.
        query(admin, SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(Identifier(dbname)))
        query(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = %s", (dbname,))
        status, body = wait_until(lambda: (r := healthz(port))[0] == 503 and r, 20,
                                  "/healthz to fail while the database is unreachable", [p],
                                  fail_on_exit=True)
        assert any("down for" in problem for problem in body["problems"]), body
    finally:
        query(admin, SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(Identifier(dbname)))
    wait_until(lambda: healthz(port)[0] == 200, 20, "/healthz to recover", [p], fail_on_exit=True)
    admin.close()
    stop(p)


# --- settings


def test_metrics_settings_defaults_and_forms() -> None:
    s = load({})
    assert (s.metrics_port, s.metrics_host, s.health_max_downtime) == (None, "127.0.0.1", 30.0)
    s = load({"METRICS_PORT": " 9100 ", "METRICS_HOST": "[::1]", "HEALTH_MAX_DOWNTIME": "500ms"})
    assert (s.metrics_port, s.metrics_host, s.health_max_downtime) == (9100, "::1", 0.5)
    assert load({"METRICS_PORT": ""}).metrics_port is None  # empty: off


# --- bad settings


@pytest.mark.parametrize(("var", "raw"), [
    ("METRICS_PORT", "0"), ("METRICS_PORT", "65536"), ("METRICS_PORT", "http"),
    ("METRICS_PORT", "-1"), ("METRICS_HOST", "bad host"), ("HEALTH_MAX_DOWNTIME", "0"),
])
def test_bad_metrics_setting_exits_2_with_one_line(var: str, raw: str) -> None:
    env = {"DATABASE_URL": UNREACHABLE_URL, "METRICS_PORT": "9100", var: raw}
    code, out, err = run_cli(["serve"], env=env, timeout=30)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"Error: invalid {var}=") and raw in lines[0], err


def test_metrics_port_in_use_stops_serve_with_one_line(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(["serve"], env={"DATABASE_URL": db_url,
                                                 "METRICS_PORT": str(port)}, timeout=30)
    assert code == 1, (out, err)
    assert err.splitlines() == [f"Error: cannot serve metrics on 127.0.0.1:{port}: "
                                "Address already in use"], err
    assert "Fetched" not in out and "Starting worker" not in out
