"""A handler that never yields blocks the whole process: nothing cooperative
can stop it, but the process notices (one line naming the task and where it
runs), reports it once it answers again (/healthz, metrics), and a shutdown
signal it keeps from being served ends the process from the monitor thread.
"""
from __future__ import annotations

import json
import re
import signal
import time
from typing import Any

from invariants import FAST, handler_env, insert_tasks, tasks, wait_until
from pgserver import free_port
from proc import ServeFactory
from scrapes import get, scrape, value

STAMP = r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} "


def test_a_blocking_handler_is_named_and_reported(db_url: str, db: Any,
                                                  serve: ServeFactory) -> None:
    [task_id] = insert_tasks(db, ["spin"])
    port = free_port()
    p = serve(db_url, env=handler_env("spin", **FAST, TEST_SPIN="3", SHUTDOWN_TIMEOUT="1",
                                      METRICS_PORT=str(port), HEALTH_MAX_DOWNTIME="4"))
    p.wait_for(rf"^{STAMP}\[Worker 1\] Task ID: {task_id} \(at handlers_for_tests\.py:\d+ in "
               r"spin\) has blocked the whole process for 1\.\ds without yielding", timeout=20)
    p.wait_for(rf"\[Worker 1\] Task ID: {task_id} stopped blocking the process after 3\.\ds")
    status, body = get(port, "/healthz")
    assert status == 503, body
    problems = json.loads(body)["problems"]
    assert any(re.match(rf"\[Worker 1\] Task ID: {task_id} \(at .*\) blocked the process for "
                        r"3s", problem) for problem in problems), problems
    metrics = scrape(port)
    assert value(metrics, "taskworker_hub_blocks_total") == 1
    assert 2.9 <= value(metrics, "taskworker_hub_blocked_seconds_total") < 4
    wait_until(lambda: get(port, "/healthz")[0] == 200, 10, "/healthz to recover", [p])
    p.signal(signal.SIGINT)
    assert p.wait(20) == 0
    assert tasks(db)[task_id]["status"] == "done"


def test_sigterm_ends_a_blocked_process_after_shutdown_timeout(db_url: str, db: Any,
                                                               serve: ServeFactory) -> None:
    [task_id] = insert_tasks(db, ["forever"])
    p = serve(db_url, env=handler_env("spin", **FAST, SHUTDOWN_TIMEOUT="2"))
    p.wait_for(r"has blocked the whole process", timeout=20)
    sent = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(15) == 1, p.output()
    took = time.monotonic() - sent
    assert 2 <= took < 5, took
    out = p.output()
    assert re.search(rf"Exiting now on a shutdown signal not handled within SHUTDOWN_TIMEOUT "
                     rf"\(2s\): \[Worker 1\] Task ID: {task_id} \(at handlers_for_tests\.py:\d+ "
                     r"in spin\) keeps the process blocked; its tasks return to pending when "
                     r"their leases expire$", out, re.MULTILINE), out
    row = tasks(db)[task_id]
    assert row["status"] == "in_progress" and str(p.pid) in row["locked_by"]  # its lease runs out


def test_a_third_ctrl_c_ends_a_process_blocked_while_cancelling(db_url: str, db: Any,
                                                                serve: ServeFactory) -> None:
    """Two Ctrl+C are served (graceful, then cancel); the handler refuses to be
    cancelled and blocks; the third Ctrl+C ends the process at once, without
    waiting out SHUTDOWN_TIMEOUT."""
    insert_tasks(db, ["stubborn"])
    p = serve(db_url, env=handler_env("stubborn", **FAST, SHUTDOWN_TIMEOUT="60"))
    p.wait_for(r"Processing task ID", timeout=20)
    p.signal(signal.SIGINT)
    p.wait_for(r"Shutdown signal received")
    p.signal(signal.SIGINT)
    p.wait_for(r"Second shutdown signal received")
    p.wait_for(r"has blocked the whole process")
    sent = time.monotonic()
    p.signal(signal.SIGINT)
    assert p.wait(10) == 1, p.output()
    assert time.monotonic() - sent < 3
    assert "Exiting now on a third shutdown signal" in p.output()
