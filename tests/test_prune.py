"""Deleting finished tasks: `taskworker prune` (which tasks, in batches of at most
--batch-size rows, each its own transaction) and `serve` pruning on its own with
PRUNE_AFTER. Tests assert the rows left in the table, the output and the exit status.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from invariants import add_task, query
from proc import cli


@pytest.fixture
def history(db: Any) -> dict[str, int]:
    """Finished and unfinished tasks, old (8 days) and recent (1 day)."""
    return {
        "old_done": add_task(db, status="done", age="8 days"),
        "old_error": add_task(db, status="error", age="8 days"),
        "old_cancelled": add_task(db, status="cancelled", age="8 days"),
        "old_pending": add_task(db, status="pending", age="8 days"),
        "old_running": add_task(db, status="in_progress", age="8 days", locked_by="h:1:x",
                                locked_until=query(db, "SELECT now()")[0][0]),
        "recent_done": add_task(db, status="done", age="1 day"),
        "recent_error": add_task(db, status="error", age="1 day"),
        "recent_cancelled": add_task(db, status="cancelled", age="6 days 23 hours"),
    }


def remaining(db: Any, history: dict[str, int]) -> set[str]:
    ids = {task_id for task_id, in query(db, "SELECT id FROM tasks")}
    return {name for name, task_id in history.items() if task_id in ids}


def test_prune_default_statuses(db_url: str, db: Any, history: dict[str, int]) -> None:
    code, out, err = cli(db_url, "prune", "--older-than", "7d")
    assert (code, out, err) == (0, "Deleted 3 tasks\n", "")
    assert remaining(db, history) == {"old_pending", "old_running", "recent_done",
                                      "recent_error", "recent_cancelled"}


def test_prune_chosen_statuses(db_url: str, db: Any, history: dict[str, int]) -> None:
    code, out, err = cli(db_url, "prune", "--older-than", "7d", "--status", "done")
    assert (code, out, err) == (0, "Deleted 1 task\n", "")
    assert "old_done" not in remaining(db, history)
    code, out, err = cli(db_url, "prune", "--older-than", "12h", "--status", "error",
                         "--status", "cancelled")
    assert (code, out, err) == (0, "Deleted 4 tasks\n", "")
    assert remaining(db, history) == {"old_pending", "old_running", "recent_done"}


def test_prune_in_small_batches(db_url: str, db: Any) -> None:
    old = [add_task(db, status="done", age="2 days") for _ in range(25)]
    kept = [add_task(db, status="done", age="1 hour") for _ in range(5)]
    code, out, err = cli(db_url, "prune", "--older-than", "1d", "--batch-size", "4")
    assert (code, out, err) == (0, "Deleted 25 tasks\n", "")
    assert sorted(i for i, in query(db, "SELECT id FROM tasks")) == kept
    assert old  # all gone


@pytest.mark.parametrize(("args", "message"), [
    (["--older-than", "a week"], "Error: invalid --older-than='a week': expected a duration"),
    (["--older-than", "1d", "--status", "pending"], "Invalid value for '--status'"),
    ([], "Missing option '--older-than'"),
])
def test_prune_refuses_bad_options(db_url: str, db: Any, history: dict[str, int],
                                   args: list[str], message: str) -> None:
    code, out, err = cli(db_url, "prune", *args)
    assert code == 2
    assert message in err
    assert len(remaining(db, history)) == len(history)


# --- serve with PRUNE_AFTER


def test_serve_prunes_on_its_own_with_prune_after(db_url: str, db: Any, serve: Any,
                                                  history: dict[str, int]) -> None:
    """PRUNE_AFTER=7d: serve deletes the finished tasks older than a week, and keeps
    the recent ones and every unfinished one (which it processes as usual)."""
    p = serve(db_url, env={"PRUNE_AFTER": "7d", "TASK_MIN_SECONDS": "0",
                           "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0",
                           "LEASE_SECONDS": "1", "FETCH_INTERVAL": "0.2"})
    p.wait_for(r"Pruned 3 finished tasks last changed more than 604800s ago", timeout=30)
    assert remaining(db, history) == {"old_pending", "old_running", "recent_done",
                                      "recent_error", "recent_cancelled"}
    p.signal(signal.SIGINT)
    assert p.wait(30) == 0
    statuses = dict(query(db, "SELECT id, status FROM tasks WHERE id IN (%s, %s)",
                          (history["old_pending"], history["old_running"])))
    assert statuses == {history["old_pending"]: "done", history["old_running"]: "done"}


def test_serve_without_prune_after_deletes_nothing(db_url: str, db: Any, serve: Any,
                                                   history: dict[str, int]) -> None:
    p = serve(db_url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                           "TASK_FAILURE_RATE": "0", "FETCH_INTERVAL": "0.2"})
    p.wait_for(rf"Task ID: {history['old_pending']} processed with status: done", timeout=30)
    p.signal(signal.SIGINT)
    assert p.wait(30) == 0
    assert "Pruned" not in p.output()
    assert remaining(db, history) == set(history)
