"""Retries with backoff, and task timeouts, seen from the table and the log."""
from __future__ import annotations

import itertools
import signal

import pytest
from invariants import (
    FAST,
    create_runs_table,
    handler_env,
    insert_tasks,
    query,
    stop_all,
    tasks,
    wait_finished,
)


@pytest.mark.parametrize(("max_retries", "status", "attempts"), [(2, "done", 3), (1, "error", 2)])
def test_failing_task_is_retried_with_backoff(db_url, db, serve, max_retries, status,  # type: ignore[no-untyped-def]
                                              attempts) -> None:
    backoff = 0.3
    create_runs_table(db)
    [task_id] = insert_tasks(db, ["flaky task"])
    p = serve(db_url, env=handler_env("flaky", **FAST, MAX_RETRIES=str(max_retries),
                                      RETRY_BACKOFF=str(backoff), TEST_FAIL_TIMES="2"))
    wait_finished(db, 30, [p])
    stop_all([p], signal.SIGINT)

    row = tasks(db)[task_id]
    assert (row["status"], row["attempts"], row["rescues"]) == (status, attempts, 0), row
    # The row keeps the last failure's message, even once the task succeeded.
    assert row["error"] == "RuntimeError: failed on attempt 2"
    assert row["result"] == ("ksat ykalf" if status == "done" else None)
    assert (row["locked_by"], row["locked_until"]) == (None, None)

    out = p.output()
    assert f"Task ID: {task_id} failed on attempt 1, retrying in " in out
    assert f"Task ID: {task_id} processed with status: {status}" in out
    if status == "error":
        assert f"Task ID: {task_id} failed: RuntimeError: failed on attempt 2" in out

    # One run per attempt, each waiting out its backoff (base * 2^(n-1), jitter 0.8-1.2).
    runs = query(db, "SELECT attempt, extract(epoch FROM at) FROM runs ORDER BY at")
    assert [a for a, _ in runs] == list(range(1, attempts + 1))
    gaps = [float(b[1]) - float(a[1]) for a, b in itertools.pairwise(runs)]
    for n, gap in enumerate(gaps, 1):
        assert gap >= backoff * 2 ** (n - 1) * 0.8, f"retry {n} came after only {gap:.3f}s"


@pytest.mark.parametrize(("max_retries", "attempts"), [(0, 1), (1, 2)])
def test_task_over_its_timeout_fails(db_url, db, serve, max_retries, attempts) -> None:  # type: ignore[no-untyped-def]
    ids = insert_tasks(db, ["slow one", "slow two"])
    p = serve(db_url, env={**FAST, "TASK_MIN_SECONDS": "5", "TASK_MAX_SECONDS": "5",
                           "TASK_TIMEOUT": "0.5", "MAX_RETRIES": str(max_retries),
                           "RETRY_BACKOFF": "0.1"})
    wait_finished(db, 20, [p])
    stop_all([p], signal.SIGINT)

    for task_id, row in tasks(db).items():
        assert row["status"] == "error", row
        assert row["error"] == "timed out after 500ms"
        assert row["attempts"] == attempts
        assert row["result"] is None
        assert f"Task ID: {task_id} failed: timed out after 500ms" in p.output()
    if max_retries:
        for task_id in ids:
            assert f"Task ID: {task_id} failed on attempt 1, retrying in " in p.output()
