"""The commands that inspect and steer the queue: status, show, retry, cancel,
prune. Each runs as `python -m taskworker ...` against a real database; tests
assert the rows left in the table, the output and the exit status.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from invariants import query
from pgserver import UNREACHABLE_URL
from proc import CLI, child_env, run_cli


def add(db: Any, payload: str = "p", status: str = "pending", age: str = "0s",
        **columns: Any) -> int:
    """Insert one task in `status`, last changed `age` ago (a Postgres interval)."""
    columns = {"payload": payload, "status": status, **columns}
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    (task_id,) = query(db, f"INSERT INTO tasks ({names}, updated_at) "
                           f"VALUES ({marks}, now() - %s::interval) RETURNING id",
                       [*columns.values(), age])[0]
    return task_id


def row(db: Any, task_id: int) -> dict[str, Any] | None:
    with db.cursor() as cur:
        cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        found = cur.fetchone()
        names = [d[0] for d in cur.description]
        return None if found is None else dict(zip(names, found, strict=True))


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    return run_cli(list(args), env={"DATABASE_URL": db_url})


def running(db: Any, holder: str = "host-a:101:abcd1234", lease: str = "20 seconds") -> int:
    return add(db, "running", "in_progress", attempts=1, locked_by=holder,
               locked_until=query(db, f"SELECT now() + interval '{lease}'")[0][0])


# --- status


@pytest.fixture
def busy_queue(db: Any) -> dict[str, Any]:
    """A queue with something in every status, two holders and a few errors."""
    ids = {
        "pending": [add(db), add(db), add(db, attempts=1)],  # one waits for a retry
        "scheduled": add(db, run_at=query(db, "SELECT now() + interval '1 hour'")[0][0]),
        "old_pending": add(db, run_at=query(db, "SELECT now() - interval '2 hours'")[0][0]),
        "running": [running(db), running(db), running(db, "host-b:202:ffff0000",
                                                           lease="-5 seconds")],
        "done": [add(db, status="done", result="r") for _ in range(4)],
        "errors": [add(db, status="error", error="ValueError: bad input") for _ in range(3)]
        + [add(db, status="error", error="TimeoutError: slow")]
        + [add(db, status="error", error="abandoned: worker lost 4 times", rescues=4)],
        "cancelled": add(db, status="cancelled"),
    }
    add(db, status="done", rescues=1, age="3 hours")  # rescued, but long ago
    return ids


def test_status_table(db_url: str, busy_queue: dict[str, Any]) -> None:
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    lines = out.splitlines()
    assert re.search(r"^pending\s+5\s+1 scheduled for later$", out, re.M), out
    assert re.search(r"^in_progress\s+3$", out, re.M)
    assert re.search(r"^done\s+5$", out, re.M)
    assert re.search(r"^error\s+5$", out, re.M)
    assert re.search(r"^cancelled\s+1$", out, re.M)
    assert re.search(r"^oldest due task waiting\s+2h 0m$", out, re.M)
    assert re.search(r"^rescued in the last hour\s+1$", out, re.M)
    assert re.search(r"^pending retries\s+1$", out, re.M)
    assert re.search(r"^host-a:101:abcd1234\s+2\s+1\ds$", out, re.M)
    assert re.search(r"^host-b:202:ffff0000\s+1\s+expired [56]\.\ds ago$", out, re.M)
    assert re.search(r"^ValueError: bad input\s+3$", out, re.M)
    assert re.search(r"^TimeoutError: slow\s+1$", out, re.M)
    # Aligned: the counts of the status table end in the same column.
    counts = [line for line in lines[1:6]]
    assert len({len(line.split("  1 scheduled")[0].rstrip()) for line in counts}) == 1


def test_status_json(db_url: str, busy_queue: dict[str, Any]) -> None:
    code, out, err = cli(db_url, "status", "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["counts"] == {"pending": 5, "in_progress": 3, "done": 5, "error": 5,
                              "cancelled": 1}
    assert snap["scheduled"] == 1
    assert 7190 < snap["oldest_pending_seconds"] < 7300
    assert snap["rescued_last_hour"] == 1
    assert snap["retrying"] == 1
    assert [(h["locked_by"], h["tasks"]) for h in snap["holders"]] == [
        ("host-a:101:abcd1234", 2), ("host-b:202:ffff0000", 1)]
    assert snap["holders"][1]["lease_left_seconds"] < 0 < snap["holders"][0]["lease_left_seconds"]
    assert snap["top_errors"] == [
        {"error": "ValueError: bad input", "tasks": 3},
        {"error": "TimeoutError: slow", "tasks": 1},
        {"error": "abandoned: worker lost 4 times", "tasks": 1},
    ]


def test_status_of_an_empty_queue(db_url: str) -> None:
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert re.search(r"^pending\s+0$", out, re.M)
    assert re.search(r"^oldest due task waiting\s+-$", out, re.M)
    assert "No task is running." in out
    assert "No task has ended in error." in out


@pytest.mark.parametrize("as_json", [False, True])
def test_status_watch_refreshes_until_ctrl_c(db_url: str, db: Any, tmp_path: Path,
                                             as_json: bool) -> None:
    out_path = tmp_path / "watch.out"
    args = [*CLI, "status", "--watch", "0.2", *(["--json"] if as_json else [])]
    with open(out_path, "w") as out, open(tmp_path / "watch.err", "w") as err:
        proc = subprocess.Popen(args, env=child_env({"DATABASE_URL": db_url}), cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        def refreshes() -> int:
            text = out_path.read_text()
            return text.count('"counts"') if as_json else text.count("Every 0.2s:")

        deadline = time.monotonic() + 20
        while refreshes() < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert refreshes() >= 2, out_path.read_text()
        add(db, "new")  # the next refresh shows it
        seen = refreshes()
        while refreshes() < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out_path.read_text()
    assert (tmp_path / "watch.err").read_text() == ""  # no traceback, no "Aborted!"
    if as_json:
        snaps = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert snaps[0]["counts"]["pending"] == 0 and snaps[-1]["counts"]["pending"] == 1
    else:
        assert re.search(r"^pending\s+1$", text, re.M)


# --- show


def test_show_prints_every_column(db_url: str, db: Any) -> None:
    task_id = add(db, "line one\nline two", "error", error="ValueError: boom", attempts=2)
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
    task_id = add(db, "p", "done", result="q")
    code, out, err = cli(db_url, "show", str(task_id), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown == {**shown, "id": task_id, "payload": "p", "status": "done", "result": "q"}
    assert set(shown) == set(row(db, task_id) or {})
    code, out, err = cli(db_url, "show", "999999")
    assert (code, out, err) == (1, "", "Error: no task with id 999999\n")


# --- retry


def test_retry_ids(db_url: str, db: Any) -> None:
    failed = add(db, status="error", error="ValueError: boom", attempts=3, rescues=1,
                 run_at=query(db, "SELECT now() - interval '1 day'")[0][0])
    parked = add(db, status="error", error="abandoned: worker lost 4 times", attempts=4,
                 rescues=4)
    done = add(db, status="done", result="ok")
    code, out, err = cli(db_url, "retry", str(failed), str(parked), str(done), "999999")
    assert code == 1
    assert out == "Retried 2 tasks\n"
    assert err.splitlines() == [
        f"Error: task {done} is done: only tasks in error are retried",
        "Error: no task with id 999999",
    ]
    for task_id, error in ((failed, "ValueError: boom"),
                           (parked, "abandoned: worker lost 4 times")):
        r = row(db, task_id)
        assert r is not None
        assert (r["status"], r["attempts"], r["rescues"], r["error"], r["locked_by"]) == (
            "pending", 0, 0, error, None)
        assert query(db, "SELECT %s <= now() AND %s > now() - interval '1 minute'",
                     (r["run_at"], r["run_at"])) == [(True,)]
    assert row(db, done)["status"] == "done"  # type: ignore[index]
    code, out, err = cli(db_url, "retry", str(failed))
    assert (code, out) == (1, "Retried 0 tasks\n")
    assert err == f"Error: task {failed} is pending: only tasks in error are retried\n"


def test_retry_all_errors_since(db_url: str, db: Any) -> None:
    recent = [add(db, status="error", error="E", age="10 minutes") for _ in range(3)]
    old = add(db, status="error", error="E", age="2 hours")
    untouched = [add(db, status="done", age="1 minute"), add(db, status="cancelled")]
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
    pending = [add(db), add(db, run_at=query(db, "SELECT now() + interval '1 day'")[0][0])]
    run = running(db)
    done = add(db, status="done")
    code, out, err = cli(db_url, "cancel", *map(str, [*pending, run, done, 999999]))
    assert code == 1
    assert out == "Cancelled 2 tasks\n"
    assert err.splitlines() == [
        f"Error: task {run} is running (held by host-a:101:abcd1234): running tasks cannot "
        "be cancelled cleanly yet; left alone",
        f"Error: task {done} is done: only pending tasks can be cancelled",
        "Error: no task with id 999999",
    ]
    statuses = dict(query(db, "SELECT id, status FROM tasks"))
    assert [statuses[i] for i in pending] == ["cancelled", "cancelled"]
    assert (statuses[run], statuses[done]) == ("in_progress", "done")
    assert row(db, run)["locked_by"] == "host-a:101:abcd1234"  # type: ignore[index]


def test_cancel_all_pending_exits_0(db_url: str, db: Any) -> None:
    ids = [add(db) for _ in range(3)]
    code, out, err = cli(db_url, "cancel", *map(str, ids), str(ids[0]))
    assert (code, out, err) == (0, "Cancelled 3 tasks\n", "")
    assert query(db, "SELECT DISTINCT status FROM tasks") == [("cancelled",)]


# --- prune


@pytest.fixture
def history(db: Any) -> dict[str, int]:
    """Finished and unfinished tasks, old (8 days) and recent (1 day)."""
    return {
        "old_done": add(db, status="done", age="8 days"),
        "old_error": add(db, status="error", age="8 days"),
        "old_cancelled": add(db, status="cancelled", age="8 days"),
        "old_pending": add(db, status="pending", age="8 days"),
        "old_running": add(db, status="in_progress", age="8 days", locked_by="h:1:x",
                           locked_until=query(db, "SELECT now()")[0][0]),
        "recent_done": add(db, status="done", age="1 day"),
        "recent_error": add(db, status="error", age="1 day"),
        "recent_cancelled": add(db, status="cancelled", age="6 days 23 hours"),
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
    old = [add(db, status="done", age="2 days") for _ in range(25)]
    kept = [add(db, status="done", age="1 hour") for _ in range(5)]
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


# --- every command: no schema, no database


COMMANDS = [["status"], ["status", "--json"], ["show", "1"], ["retry", "1"],
            ["retry", "--all-errors"], ["cancel", "1"], ["prune", "--older-than", "1d"],
            ["enqueue", "x"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_before_migrate(empty_db_url: str, args: list[str]) -> None:
    code, out, err = cli(empty_db_url, *args)
    assert (code, out) == (1, "")
    assert err == 'Error: table "tasks" does not exist: run "taskworker migrate" first\n'


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_without_database(args: list[str]) -> None:
    code, out, err = run_cli(args, env={"DATABASE_URL": UNREACHABLE_URL, "CONNECT_TIMEOUT": "3"})
    assert (code, out) == (1, "")
    assert err.startswith(f"Error: cannot connect to database {UNREACHABLE_URL}")
    assert err.count("\n") == 1


def test_cancelled_status_needs_migration_004(db: Any) -> None:
    """The migration widened the status check: 'cancelled' is accepted, nonsense is not."""
    add(db, status="cancelled")
    with pytest.raises(Exception, match="tasks_status_check"):
        add(db, status="canceled")


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
