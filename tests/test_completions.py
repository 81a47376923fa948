"""What the completer reports must be what the table holds: a stale attempt's
outcome in the same batch as the new attempt's of the same task is discarded,
not counted; and a completion whose reply was lost with its connection (it had
committed) is reported as written, not as a lease lost.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2.extensions
from invariants import (
    DONE_LINE,
    FAST,
    LEASE_LOST_LINE,
    assert_all_done_once,
    completions,
    ids_in,
    insert_tasks,
    install_completion_audit,
    query,
    stop_all,
    tasks,
    wait_finished,
)
from pgserver import free_port
from proc import ServeFactory, child_env
from scrapes import scrape, value
from tcpproxy import Proxy

HERE = Path(__file__).resolve().parent
HOLDER = "testhost:1:abcdef12"


def test_a_stale_outcome_in_the_same_batch_as_the_new_one_is_not_counted(
        db_url: str, db: Any) -> None:
    """Task X was claimed twice by this process: attempt 1 (its lease ran out and
    it was rescued) and attempt 2 (running now). Both outcomes reach the completer
    in one batch: only attempt 2's is written, logged and counted."""
    install_completion_audit(db)
    [task_id] = insert_tasks(db, ["twice"])
    query(db, "UPDATE tasks SET status = 'in_progress', attempts = 2, fence = 2, rescues = 1, "
              "locked_by = %s, locked_until = now() + interval '1 minute' WHERE id = %s",
          (HOLDER, task_id))
    spec = [[task_id, 1, 0, 1, "stale result"], [task_id, 2, 1, 2, "new result"]]
    done = subprocess.run([sys.executable, str(HERE / "step_driver.py"), "write", db_url,
                           HOLDER, json.dumps(spec)], env=child_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    *lines, counters = done.stdout.strip().splitlines()
    log = "\n".join(lines)
    stats = json.loads(counters)

    row = tasks(db)[task_id]
    assert (row["status"], row["result"], row["attempts"]) == ("done", "new result", 2)
    assert completions(db) == {task_id: 1}
    assert re.findall(r"\[Worker (\d)\] Task ID: \d+ processed with status: done", log) == ["2"]
    assert re.findall(r"\[Worker (\d)\] Task ID: \d+ lease lost, result discarded", log) == ["1"]
    assert (stats["done"], stats["lease_lost"], stats["unwritten"]) == (1, 1, 0), stats


def test_a_completion_whose_reply_was_lost_is_reported_as_written(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """A proxy drops the reply to the first completion statement (the server ran
    and committed it) and closes that connection. The completer reconnects and
    sends the statement again, which finds nothing left to write: the rows say
    the outcomes were written by this very attempt, and that is what is logged."""
    install_completion_audit(db)
    ids = insert_tasks(db, [f"reply lost {n}" for n in range(3)])
    dsn = psycopg2.extensions.parse_dsn(db_url)
    proxy = Proxy(dsn.get("host", "127.0.0.1"), int(dsn.get("port", 5432)))
    try:
        url = psycopg2.extensions.make_dsn(db_url, host="127.0.0.1", port=proxy.port,
                                           sslmode="disable")
        proxy.drop_reply_to(b"AS v(id, fence, status")
        port = free_port()
        p = serve(url, env={**FAST, "LISTEN": "false", "FETCH_INTERVAL": "0.2",
                            "METRICS_PORT": str(port)})
        wait_finished(db, 30, [p])
        p.wait_for(r"Task ID: \d+ processed with status: done(.|\n)*"
                   r"Task ID: \d+ processed with status: done(.|\n)*"
                   r"Task ID: \d+ processed with status: done")
        m = scrape(port)
        stop_all([p], signal.SIGINT)
    finally:
        proxy.close()
    out = p.output()
    assert proxy.dropped == 1
    assert "Database connection lost (completer)" in out, out
    written_before = ids_in(out, r"Task ID: (\d+) outcome was written before the connection "
                                 r"was lost")
    assert written_before, out
    assert not ids_in(out, LEASE_LOST_LINE), out
    assert sorted(ids_in(out, DONE_LINE)) == ids  # each reported done once
    assert_all_done_once(db, ids)
    assert value(m, "taskworker_tasks_finished_total", status="done") == 3
    assert value(m, "taskworker_lease_losses_total") == 0
    assert value(m, "taskworker_database_reconnects_total", connection="completer") == 1
