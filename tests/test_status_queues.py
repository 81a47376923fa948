"""Seeing who serves what: the process table that serve keeps fresh, `status`
by queue and by task name (table and --json) with a line for each set of tasks
no running process would claim, `pause`/`resume`, and the per-queue and
per-name metrics.

Rows are inserted directly, in the states each test needs. Where a real serve
runs, the due tasks it must not take are held with FOR UPDATE by the test (every
claim skips locked rows), so nothing here depends on which tasks a claim picks.
"""
from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from invariants import FAST, add_task, query, wait_until
from pgserver import free_port
from proc import ServeFactory, cli
from scrapes import scrape

from taskworker.store.sql import QUERIES

DEFAULT_HINT = "start a serve without TASK_MODULES or with TASK_HANDLER"


def add_process(db: Any, holder: str, *, queues: list[str] | None, tasks: list[str],
                default_handler: bool, seen: str = "0s", lease: float = 30) -> None:
    query(db, "INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, "
              "default_handler, lease_seconds, started_at, seen_at) VALUES (%s, %s, %s, %s, "
              "%s, %s, %s, now() - interval '1 hour', now() - %s::interval)",
          (holder, holder.split(":")[0], int(holder.split(":")[1]), queues, tasks,
           default_handler, lease, seen))


def ago(db: Any, interval: str) -> Any:
    return query(db, "SELECT now() - %s::interval", (interval,))[0][0]


def running(db: Any, holder: str, **columns: Any) -> int:
    """A task in progress held by `holder` whose handler started (started_at set)."""
    return add_task(db, "running", "in_progress", attempts=1, locked_by=holder,
                    locked_until=ago(db, "-1 hour"), started_at=ago(db, "1 second"),
                    **columns)


@pytest.fixture
def mixed(db: Any) -> None:
    """Tasks of several names in several queues, one live process serving some of
    them, one process gone quiet, and a paused queue."""
    for age in ("2 minutes", "5 seconds"):
        add_task(db, task="resize", queue="images", run_at=ago(db, age))
    add_task(db, task="resize", queue="images", run_at=ago(db, "-1 hour"))  # scheduled
    running(db, "web-1:100:aaaa1111", task="resize", queue="images")
    for _ in range(3):
        add_task(db, task="send", queue="mail")  # a name no live process knows
    add_task(db, task="resize", queue="reports")  # a known name, in a queue nobody serves
    add_task(db)  # no name, queue default: web-1 has a default handler
    for _ in range(4):
        add_task(db, status="done", task="resize", queue="images")  # finished: not counted
    add_process(db, "web-1:100:aaaa1111", queues=["default", "images"], tasks=["resize"],
                default_handler=True)
    add_process(db, "old-2:200:bbbb2222", queues=None, tasks=["send"], default_handler=True,
                seen="10 minutes")  # not seen for 20 of its leases: not alive
    query(db, "INSERT INTO taskworker_paused_queues (queue) VALUES ('mail')")


def test_status_table_by_queue_and_name(db_url: str, mixed: None) -> None:
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert re.search(r"^QUEUE\s+PENDING\s+SCHEDULED\s+CLAIMED\s+RUNNING\s+OLDEST PENDING$",
                     out, re.M), out
    assert re.search(r"^default\s+1\s+0\s+0\s+0\s+[\d.]+s$", out, re.M), out
    assert re.search(r"^images\s+2\s+1\s+0\s+1\s+2m \d+s$", out, re.M), out
    assert re.search(r"^mail\s+3\s+0\s+0\s+0\s+[\d.]+s\s+paused$", out, re.M), out
    assert re.search(r"^reports\s+1\s+0\s+0\s+0\s+\S+$", out, re.M), out
    assert re.search(r"^\(no name\)\s+1\s+0\s+0\s+0\s+\S+$", out, re.M), out
    assert re.search(r"^resize\s+3\s+1\s+0\s+1\s+2m \d+s$", out, re.M), out
    assert re.search(r"^send\s+3\s+0\s+0\s+0\s+\S+$", out, re.M), out
    assert re.search(r"^web-1:100:aaaa1111\s+web-1\s+100\s+default,images\s+resize,\(no name\)"
                     r"\s+1h 0m\s+[\d.]+s ago\s+1$", out, re.M), out
    assert "old-2" not in out  # gone quiet: not shown as running
    assert re.search(r"^PAUSED QUEUE\s+SINCE$\n^mail\s+[\d.]+s ago$", out, re.M), out
    warnings = [line for line in out.splitlines() if line.startswith("Warning:")]
    assert warnings == ["Warning: no running process serves task send (3 pending)",
                        "Warning: no running process serves queue reports (1 pending)"], out


def test_status_json_by_queue_and_name(db_url: str, mixed: None) -> None:
    code, out, err = cli(db_url, "status", "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["counts"]["done"] == 4
    queues = {q["queue"]: q for q in snap["queues"]}
    assert list(queues) == ["default", "images", "mail", "reports"]
    assert {k: queues["images"][k] for k in ("pending", "scheduled", "claimed", "running",
                                              "paused")} == {
        "pending": 2, "scheduled": 1, "claimed": 0, "running": 1, "paused": False}
    assert 119 < queues["images"]["oldest_pending_seconds"] < 180
    assert queues["mail"]["paused"] is True
    tasks = {t["task"]: t for t in snap["tasks"]}
    assert list(tasks) == [None, "resize", "send"]
    assert (tasks["resize"]["pending"], tasks["resize"]["running"]) == (3, 1)
    assert [p["holder"] for p in snap["processes"]] == ["web-1:100:aaaa1111"]
    process = snap["processes"][0]
    assert (process["host"], process["pid"], process["queues"], process["tasks"],
            process["default_handler"], process["tasks_held"]) == (
        "web-1", 100, ["default", "images"], ["resize"], True, 1)
    assert 3590 < process["up_seconds"] < 3700 and process["seen_seconds_ago"] < 60
    assert [p["queue"] for p in snap["paused_queues"]] == ["mail"]
    assert [(u["kind"], u["name"], u["pending"]) for u in snap["unserved"]] == [
        ("task", "send", 3), ("queue", "reports", 1)]


def test_unnamed_tasks_wait_for_a_default_handler(db_url: str, db: Any) -> None:
    add_task(db)
    add_task(db, queue="images")
    add_task(db, task="resize", queue="images")
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert "No serve process is running." in out
    assert f"Warning: 2 tasks wait for a default handler: {DEFAULT_HINT}" in out, out
    assert "Warning: no running process serves task resize (1 pending)" in out, out

    # A process with named tasks only (TASK_MODULES without TASK_HANDLER) changes nothing
    # for the tasks without a name.
    add_process(db, "w:1:cccc", queues=None, tasks=["resize"], default_handler=False)
    snap = json.loads(cli(db_url, "status", "--json")[1])
    assert [u["message"] for u in snap["unserved"]] == [
        f"2 tasks wait for a default handler: {DEFAULT_HINT}"]
    add_process(db, "w:2:dddd", queues=None, tasks=[], default_handler=True)
    assert json.loads(cli(db_url, "status", "--json")[1])["unserved"] == []


def test_status_of_an_empty_table_has_no_backlog_sections(db_url: str) -> None:
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert "QUEUE" not in out and "Warning" not in out and "PAUSED" not in out
    assert "No serve process is running." in out


def test_show_prints_the_new_columns(db_url: str, db: Any) -> None:
    task_id = add_task(db, task="resize", queue="images", priority=7)
    code, out, err = cli(db_url, "show", str(task_id))
    assert code == 0, err
    for line in (r"task\s+resize", r"queue\s+images", r"priority\s+7", r"unique_key\s+\(null\)"):
        assert re.search(rf"^{line}$", out, re.M), out


def test_pause_and_resume(db_url: str, db: Any) -> None:
    def paused() -> list[str]:
        return [q for (q,) in query(db, "SELECT queue FROM taskworker_paused_queues ORDER BY 1")]

    assert cli(db_url, "pause", "images", "mail", "images") == (
        0, "Paused queue images\nPaused queue mail\n", "")
    assert paused() == ["images", "mail"]
    assert cli(db_url, "pause", "mail", "video") == (
        0, "Queue mail was already paused\nPaused queue video\n", "")
    assert cli(db_url, "resume", "mail", "audio") == (
        0, "Resumed queue mail\nQueue audio was not paused\n", "")
    assert paused() == ["images", "video"]

    code, out, err = cli(db_url, "pause", "bad queue")
    assert (code, out) == (2, ""), err
    assert err.startswith("Error: queue 'bad queue' is not a valid name"), err
    assert len(err.splitlines()) == 1
    code, out, err = cli(db_url, "resume")
    assert code == 2 and "Missing argument" in err
    assert paused() == ["images", "video"]


def process_row(db: Any, holder_like: str = "%") -> dict[str, Any] | None:
    with db.cursor() as cur:
        cur.execute("SELECT * FROM taskworker_processes WHERE holder LIKE %s", (holder_like,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row,
                                                 strict=True))


def test_serve_records_itself_keeps_fresh_and_leaves(db_url: str, db: Any,
                                                     serve: ServeFactory) -> None:
    add_process(db, "dead:1:eeee", queues=None, tasks=[], default_handler=True,
                seen="1 hour")  # unseen for 120 leases: reaped when a serve starts
    add_process(db, "quiet:2:ffff", queues=None, tasks=[], default_handler=True,
                seen="20 seconds", lease=3)  # not alive, not reaped yet
    p = serve(db_url, env={**FAST, "QUEUES": "images:2,mail"})
    p.wait_for(r"Starting worker 1$")
    holder = f"{socket.gethostname()}:{p.pid}:%"
    row = wait_until(lambda: process_row(db, holder), 10, "serve's row", [p])
    assert (row["host"], row["pid"], row["queues"], row["tasks"], row["default_handler"],
            row["schedules"], row["lease_seconds"]) == (
        socket.gethostname(), p.pid, ["images", "mail"], [], True, {}, 3.0)
    assert process_row(db, "dead:%") is None
    assert process_row(db, "quiet:%") is not None

    # The heartbeat (every LEASE_SECONDS / 3) moves seen_at, and writes the row
    # again if it was deleted.
    first = row["seen_at"]
    wait_until(lambda: process_row(db, holder)["seen_at"] > first, 5, "a newer seen_at", [p])
    query(db, "DELETE FROM taskworker_processes WHERE holder LIKE %s", (holder,))
    wait_until(lambda: process_row(db, holder), 5, "the row written again", [p])

    snap = json.loads(cli(db_url, "status", "--json")[1])
    assert [(x["host"], x["pid"], x["queues"]) for x in snap["processes"]] == [
        (socket.gethostname(), p.pid, ["images", "mail"])]

    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    assert process_row(db, holder) is None
    assert "Traceback" not in p.output() and "taskworker_processes" not in p.output()


def test_metrics_by_queue_and_name(db_url: str, db: Any, serve: ServeFactory) -> None:
    for n in range(103):  # more queues than the metrics export
        add_task(db, queue=f"bulk-{n:03}", task="send", run_at=ago(db, "1 minute"))
    for _ in range(5):
        add_task(db, queue="big", run_at=ago(db, "10 minutes"))
    add_task(db, queue="big", task="resize", run_at=ago(db, "-1 hour"))
    running(db, "elsewhere:1:abcd", queue="big", task="resize")
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:  # held: no claim takes them, the counts still see them
            cur.execute("SELECT id FROM tasks WHERE status = 'pending' FOR UPDATE")
        port = free_port()
        p = serve(db_url, env={**FAST, "METRICS_PORT": str(port), "QUEUES": "idle,big"})
        p.wait_for(rf"Serving metrics on http://127\.0\.0\.1:{port}/metrics$")

        def sampled() -> dict[str, Any] | None:
            samples = scrape(port)
            by_queue = {labels: v for (name, labels), v in samples.items()
                        if name == "taskworker_tasks_by_queue"}
            return {"samples": samples, "by_queue": by_queue} if by_queue else None

        got = wait_until(sampled, 15, "the per-queue series", [p])
        samples, by_queue = got["samples"], got["by_queue"]
    finally:
        conn.rollback()
        conn.close()

    def series(name: str, label: str) -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        for (metric, labels), v in samples.items():
            if metric == name:
                labels = dict(labels)
                found.setdefault(labels[label], {})[labels.get("state", "value")] = v
        return found

    queues = series("taskworker_tasks_by_queue", "queue")
    assert len(queues) == 100 and "(other)" in queues, sorted(queues)
    assert queues["big"] == {"pending": 5, "scheduled": 1, "running": 1}
    assert queues["idle"] == {"pending": 0, "scheduled": 0, "running": 0}  # served: always there
    assert sum(q["pending"] for q in queues.values()) == 108
    assert queues["(other)"]["pending"] == 108 - 5 - 97  # 97 bulk queues kept, 6 summed
    assert len(by_queue) == 300  # 100 queues x 3 states
    oldest = series("taskworker_oldest_pending_seconds_by_queue", "queue")
    assert 599 < oldest["big"]["value"] < 700 and oldest["idle"]["value"] == 0
    assert 59 < oldest["(other)"]["value"] < 120

    names = series("taskworker_tasks_by_name", "task")
    assert names == {"(no name)": {"pending": 5, "scheduled": 0, "running": 0},
                     "resize": {"pending": 0, "scheduled": 1, "running": 1},
                     "send": {"pending": 103, "scheduled": 0, "running": 0}}
    by_name_oldest = series("taskworker_oldest_pending_seconds_by_name", "task")
    assert 599 < by_name_oldest["(no name)"]["value"] < 700
    assert by_name_oldest["resize"]["value"] == 0
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()


def test_a_queue_that_empties_reads_zero_instead_of_vanishing(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """A serve of every queue exports a queue it has seen at 0 once it drains
    (issue 25 item 12: an alert on it must not go absent)."""
    task_id = add_task(db, queue="emails")
    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:  # held: the sample sees it pending, no claim takes it
            cur.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
        port = free_port()
        p = serve(db_url, env={**FAST, "METRICS_PORT": str(port)})
        p.wait_for(rf"Serving metrics on http://127\.0\.0\.1:{port}/metrics$")

        def emails() -> float | None:
            return scrape(port).get(("taskworker_tasks_by_queue",
                                     (("queue", "emails"), ("state", "pending"))))

        wait_until(lambda: emails() == 1, 15, "queue emails exported with 1 pending", [p])
    finally:
        conn.rollback()
        conn.close()
    wait_until(lambda: query(db, "SELECT status = 'done' FROM tasks WHERE id = %s",
                             (task_id,))[0][0], 15, "the task to run", [p])
    wait_until(lambda: emails() == 0, 15, "queue emails exported at 0 once drained", [p])
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()


def plan_scans(db: Any, statement: str) -> list[tuple[str, str | None]]:
    """The scans of tasks in the plan of `statement`: (node type, index)."""
    def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield plan
        for child in plan.get("Plans", ()):
            yield from nodes(child)

    raw = query(db, "EXPLAIN (FORMAT JSON) " + statement)[0][0]
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    return [(n["Node Type"], n.get("Index Name")) for n in nodes(plan)
            if n.get("Relation Name") == "tasks"]


def test_the_backlog_reads_only_pending_and_running_rows(db: Any) -> None:
    """status and the metrics group pending and running tasks through their
    partial indexes: a table of finished tasks however large is not scanned."""
    query(db, "INSERT INTO tasks (payload, status, queue, task) SELECT 'old', 'done', "
              "'q' || n % 10, 't' || n % 7 FROM generate_series(1, 200000) AS n")
    query(db, "INSERT INTO tasks (payload, queue, task) SELECT 'new', 'q' || n % 10, "
              "'t' || n % 7 FROM generate_series(1, 2000) AS n")
    query(db, "ANALYZE tasks")
    scans = plan_scans(db, QUERIES["status_backlog"])
    assert len(scans) == 2, scans  # one for the pending tasks, one for the running ones
    assert all(kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
               for kind, _ in scans), scans
