"""The log of `taskworker serve` as JSON (LOG_FORMAT=json): one object per line,
start-up and shutdown included, task lines carrying their task id, worker and attempt.
"""
from __future__ import annotations

import json
import re
import signal
import time
from typing import Any

from invariants import query, stop_all, wait_until
from proc import ServeFactory


def test_json_logs_one_object_per_line(db_url: str, db: Any, serve: ServeFactory) -> None:
    query(db, "INSERT INTO tasks (payload) VALUES ('ok 1'), ('ok 2'), (NULL) RETURNING id")
    p = serve(db_url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                           "TASK_FAILURE_RATE": "0", "LOG_FORMAT": "json"})
    wait_until(lambda: p.output().count("processed with status") == 3, 30,
               "3 tasks processed", [p], fail_on_exit=True)
    stop_all([p], signal.SIGINT)
    lines = p.output().splitlines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, start-up and shutdown included (no traceback)
        assert {"time", "level", "message"} <= record.keys(), line
        assert record["level"] in ("debug", "info", "warning", "error"), line
        records.append(record)
    messages = [r["message"] for r in records]
    assert messages[0].startswith("Connecting to database: ")
    assert "All workers have completed, shutdown successful" in messages
    task_lines = [r for r in records if re.match(r"\[Worker \d+\] .*[Tt]ask ID: \d+",
                                                 r["message"])]
    # processing, finished, processed; and failed for NULL
    assert len(task_lines) == 10, task_lines
    for r in task_lines:
        assert isinstance(r["task_id"], int) and str(r["task_id"]) in r["message"], r
        assert r["worker"] >= 1 and r["attempt"] == 1, r
    assert all("task_id" not in r for r in records if r not in task_lines)
    assert time.strptime(records[0]["time"][:19], "%Y-%m-%dT%H:%M:%S")
