"""The commands that act on single tasks: show, retry, cancel. Each runs as
`python -m taskworker ...` against a real database; tests assert the rows left in
the table, the output and the exit status.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from invariants import add_task, query, running_task, task_row
from proc import cli

# --- show


def test_show_prints_every_column(db_url: str, db: Any) -> None:
    task_id = add_task(db, "line one\nline two", "error", error="ValueError: boom", attempts=2)
    code, out, err = cli(db_url, "show", str(task_id))
    assert code == 0, err
    columns = [name for name, in query(db, "SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'tasks' ORDER BY ordinal_position")]
    names = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert names == columns
    assert re.search(rf"^id\s+{task_id}$", out, re.M)
    assert re.search(r"^payload\s+line one\n\s+line two$", out, re.M)
    assert re.search(r"^status\s+error$", out, re.M)
    assert re.search(r"^result\s+\(null\)$", out, re.M)
    assert re.search(r"^error\s+ValueError: boom$", out, re.M)
    assert re.search(r"^attempts\s+2$", out, re.M)


def test_show_json_and_missing_id(db_url: str, db: Any) -> None:
    task_id = add_task(db, "p", "done", result="q")
    code, out, err = cli(db_url, "show", str(task_id), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown == {**shown, "id": task_id, "payload": "p", "status": "done", "result": "q"}
    assert set(shown) == set(task_row(db, task_id) or {})
    code, out, err = cli(db_url, "show", "999999")
    assert (code, out, err) == (1, "", "Error: no task with id 999999\n")


def test_show_says_whether_a_task_in_progress_started(db_url: str, db: Any) -> None:
    """A task in progress is claimed, not started, until started_at is set (it waits
    in its process's local queue); then running, and started_at says since when."""
    claimed = running_task(db, started=False)
    code, out, err = cli(db_url, "show", str(claimed))
    assert code == 0, err
    assert re.search(r"^status\s+in_progress \(claimed, not started\)$", out, re.M), out
    assert re.search(r"^started_at\s+\(null\)$", out, re.M), out
    running = running_task(db)
    started = (task_row(db, running) or {})["started_at"]
    out = cli(db_url, "show", str(running))[1]
    assert re.search(r"^status\s+in_progress \(running\)$", out, re.M), out
    assert re.search(rf"^started_at\s+{re.escape(str(started))}$", out, re.M), out
    shown = json.loads(cli(db_url, "show", str(running), "--json")[1])  # the row as it is
    assert (shown["status"], shown["started_at"]) == ("in_progress", started.isoformat())


# --- retry


def test_retry_ids(db_url: str, db: Any) -> None:
    failed = add_task(db, status="error", error="ValueError: boom", attempts=3, rescues=1,
                      run_at=query(db, "SELECT now() - interval '1 day'")[0][0])
    parked = add_task(db, status="error", error="abandoned: worker lost 4 times", attempts=4,
                      rescues=4)
    done = add_task(db, status="done", result="ok")
    code, out, err = cli(db_url, "retry", str(failed), str(parked), str(done), "999999")
    assert code == 1
    assert out == "Retried 2 tasks\n"
    assert err.splitlines() == [
        f"Error: task {done} is done: only tasks in error are retried",
        "Error: no task with id 999999",
    ]
    for task_id, error in ((failed, "ValueError: boom"),
                           (parked, "abandoned: worker lost 4 times")):
        r = task_row(db, task_id)
        assert r is not None
        assert (r["status"], r["attempts"], r["rescues"], r["error"], r["locked_by"]) == (
            "pending", 0, 0, error, None)
        assert query(db, "SELECT %s <= now() AND %s > now() - interval '1 minute'",
                     (r["run_at"], r["run_at"])) == [(True,)]
    assert task_row(db, done)["status"] == "done"  # type: ignore[index]
    code, out, err = cli(db_url, "retry", str(failed))
    assert (code, out) == (1, "Retried 0 tasks\n")
    assert err == f"Error: task {failed} is pending: only tasks in error are retried\n"


def test_retry_all_errors_since(db_url: str, db: Any) -> None:
    recent = [add_task(db, status="error", error="E", age="10 minutes") for _ in range(3)]
    old = add_task(db, status="error", error="E", age="2 hours")
    untouched = [add_task(db, status="done", age="1 minute"), add_task(db, status="cancelled")]
    code, out, err = cli(db_url, "retry", "--all-errors", "--since", "1h")
    assert (code, out, err) == (0, "Retried 3 tasks\n", "")
    statuses = dict(query(db, "SELECT id, status FROM tasks"))
    assert [statuses[i] for i in recent] == ["pending"] * 3
    assert statuses[old] == "error"
    assert [statuses[i] for i in untouched] == ["done", "cancelled"]
    code, out, err = cli(db_url, "retry", "--all-errors")
    assert (code, out, err) == (0, "Retried 1 task\n", "")
    assert query(db, "SELECT count(*) FROM tasks WHERE status = 'error'") == [(0,)]


@pytest.mark.parametrize(("args", "message"), [
    ([], "Error: give task IDs or --all-errors (not both)\n"),
    (["1", "--all-errors"], "Error: give task IDs or --all-errors (not both)\n"),
    (["1", "--since", "1h"], "Error: --since goes with --all-errors\n"),
    (["--all-errors", "--since", "an hour"],
     "Error: invalid --since='an hour': expected a duration such as 5, 5s, 1.5 or 500ms\n"),
])
def test_retry_usage_errors(db_url: str, args: list[str], message: str) -> None:
    assert cli(db_url, "retry", *args) == (2, "", message)


# --- cancel


def test_cancel(db_url: str, db: Any) -> None:
    tomorrow = query(db, "SELECT now() + interval '1 day'")[0][0]
    pending = [add_task(db), add_task(db, run_at=tomorrow)]
    run = running_task(db)
    done = add_task(db, status="done")
    code, out, err = cli(db_url, "cancel", *map(str, [*pending, run, done, 999999]))
    assert code == 1
    # One line per ID, in the order given, saying what happened (issue 25, item 10).
    assert out.splitlines() == [
        f"Task {pending[0]}: cancelled", f"Task {pending[1]}: cancelled",
        f"Task {run}: running; asked its process to stop it (it ends cancelled)"]
    assert err.splitlines() == [
        f"Task {done}: not cancelled: it is done (only pending and running tasks can be "
        "cancelled)",
        "Task 999999: not cancelled: no task has this id",
    ]
    statuses = dict(query(db, "SELECT id, status FROM tasks"))
    assert [statuses[i] for i in pending] == ["cancelled", "cancelled"]
    assert query(db, "SELECT DISTINCT error FROM tasks WHERE id = ANY(%s)", (pending,)) == [
        ("cancelled: by taskworker cancel",)]
    # A running task's status is its holder's to write: only the request is recorded.
    assert (statuses[run], statuses[done]) == ("in_progress", "done")
    row = task_row(db, run)
    assert row["locked_by"] == "host-a:101:abcd1234"  # type: ignore[index]
    assert row["cancel_requested_at"] is not None  # type: ignore[index]


def test_cancel_all_pending_exits_0(db_url: str, db: Any) -> None:
    ids = [add_task(db) for _ in range(3)]
    code, out, err = cli(db_url, "cancel", *map(str, ids), str(ids[0]))
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"Task {i}: cancelled" for i in ids]
    assert query(db, "SELECT DISTINCT status FROM tasks") == [("cancelled",)]
