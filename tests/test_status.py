"""`taskworker status`: the overview of the queue (counts by status, what is
scheduled, who holds what, the most common errors), as a table, as JSON, and
refreshed with --watch until Ctrl+C. Runs as `python -m taskworker status` against
a real database; tests assert the output and the exit status.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from invariants import FAST, add_task, query, running_task, wait_until
from proc import CLI, ServeFactory, child_env, cli


@pytest.fixture
def busy_queue(db: Any) -> dict[str, Any]:
    """A queue with something in every status, two holders and a few errors."""
    ids = {
        "pending": [add_task(db), add_task(db), add_task(db, attempts=1)],  # one waits for a retry
        "scheduled": add_task(db, run_at=query(db, "SELECT now() + interval '1 hour'")[0][0]),
        "old_pending": add_task(db, run_at=query(db, "SELECT now() - interval '2 hours'")[0][0]),
        "running": [running_task(db), running_task(db),
                    running_task(db, "host-b:202:ffff0000", lease="-5 seconds")],
        "done": [add_task(db, status="done", result="r") for _ in range(4)],
        "errors": [add_task(db, status="error", error="ValueError: bad input") for _ in range(3)]
        + [add_task(db, status="error", error="TimeoutError: slow")]
        + [add_task(db, status="error", error="abandoned: worker lost 4 times", rescues=4)],
        "cancelled": add_task(db, status="cancelled"),
    }
    add_task(db, status="done", rescues=1, age="3 hours")  # rescued, but long ago
    return ids


def lease_left(db: Any, holder: str) -> float:
    """Seconds left on `holder`'s soonest lease by the database's clock, as status
    computes it (negative: expired)."""
    return query(db, "SELECT extract(epoch FROM min(locked_until) - now())::float "
                     "FROM tasks WHERE locked_by = %s", (holder,))[0][0]


def shows(shown: str, low: float, high: float) -> bool:
    """Whether a duration status printed (tenths below 10 s, rounded; whole seconds
    from 10 s on, cut) can stand for a value between `low` and `high`."""
    value = float(shown)
    if "." in shown:
        return low - 0.05 <= value <= high + 0.05
    return int(low) <= value <= high


def test_status_table(db_url: str, db: Any, busy_queue: dict[str, Any]) -> None:
    # The leases move on while the command starts (seconds, on a loaded machine):
    # what it shows must lie between what the table says before and after it.
    before = {h: lease_left(db, h) for h in ("host-a:101:abcd1234", "host-b:202:ffff0000")}
    code, out, err = cli(db_url, "status")
    after = {h: lease_left(db, h) for h in before}
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
    assert re.search(r"^HOLDER \(locked_by\)\s+CLAIMED\s+RUNNING\s+LEASE LEFT$", out, re.M)
    left = re.search(r"^host-a:101:abcd1234\s+0\s+2\s+(\d+(?:\.\d)?)s$", out, re.M)
    assert left and shows(left[1], after["host-a:101:abcd1234"],
                          before["host-a:101:abcd1234"]), (before, after, out)
    expired = re.search(r"^host-b:202:ffff0000\s+0\s+1\s+expired (\d+(?:\.\d)?)s ago$",
                        out, re.M)
    assert expired and shows(expired[1], -before["host-b:202:ffff0000"],
                             -after["host-b:202:ffff0000"]), (before, after, out)
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
                              "cancelled": 1, "waiting": 0}
    assert snap["scheduled"] == 1
    assert 7190 < snap["oldest_pending_seconds"] < 7300
    assert snap["rescued_last_hour"] == 1
    assert snap["retrying"] == 1
    assert [(h["locked_by"], h["tasks"]) for h in snap["holders"]] == [
        ("host-a:101:abcd1234", 2), ("host-b:202:ffff0000", 1)]
    assert snap["holders"][1]["lease_left_seconds"] < 0 < snap["holders"][0]["lease_left_seconds"]
    assert snap["top_errors"] == [
        {"error": "ValueError: bad input", "tasks": 3, "messages": 1},
        {"error": "TimeoutError: slow", "tasks": 1, "messages": 1},
        {"error": "abandoned: worker lost 4 times", "tasks": 1, "messages": 1},
    ]


def test_errors_alike_are_one_row_with_an_example(db_url: str, db: Any) -> None:
    """ERRORS groups by exception type and message shape (issue 25 item 12):
    messages that differ only in numbers, ids or quoted values are one row."""
    for error in ["CardDeclined: card declined for customer-17",
                  "CardDeclined: card declined for customer-4242",
                  "CardDeclined: card declined for customer-9",
                  "KeyError: 'user_9'", "KeyError: 'ann'",
                  "LookupError: order 3f2a9c1d-0b1e-4c4e-9a0d-0123456789ab not found",
                  "LookupError: order 0badf00d-aaaa-4bbb-8ccc-0123456789ab not found",
                  "ValueError: card declined for customer-1"]:  # another type: its own row
        add_task(db, status="error", error=error)
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    rows = [re.split(r"\s{2,}", line) for line in out[out.index("ERRORS"):].splitlines()]
    assert rows[1:6] == [
        ["CardDeclined: card declined for customer-17", "3", "3 messages alike"],
        ["KeyError: 'ann'", "2", "2 messages alike"],
        ["LookupError: order 0badf00d-aaaa-4bbb-8ccc-0123456789ab not found", "2",
         "2 messages alike"],
        ["ValueError: card declined for customer-1", "1"],
        ["(alike: the same exception type, the messages differ only in numbers, ids or "
         "quoted values; one example shown)"]], out


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

        def wait_refreshes(count: int) -> None:
            wait_until(lambda: refreshes() >= count or proc.poll() is not None, 20,
                       lambda: f"{count} refreshes:\n{out_path.read_text()}")
            assert proc.poll() is None, out_path.read_text()

        wait_refreshes(2)
        add_task(db, "new")  # the next refresh shows it
        wait_refreshes(refreshes() + 2)
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


def test_a_claimed_task_is_not_called_running(db_url: str, db: Any) -> None:
    """A task in progress whose handler has not started (started_at NULL: claimed,
    waiting in its process's local queue) counts as claimed, apart from the running
    ones, in every section; once started_at is set it is running."""
    claimed = [running_task(db, started=False), running_task(db, started=False)]
    running_task(db)
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert re.search(r"^in_progress\s+3\s+2 claimed, not started$", out, re.M), out
    assert re.search(r"^QUEUE\s+PENDING\s+SCHEDULED\s+CLAIMED\s+RUNNING\s+OLDEST PENDING$",
                     out, re.M), out
    assert re.search(r"^default\s+0\s+0\s+2\s+1\s+-$", out, re.M), out
    assert re.search(r"^\(no name\)\s+0\s+0\s+2\s+1\s+-$", out, re.M), out
    assert re.search(r"^host-a:101:abcd1234\s+2\s+1\s+\d+(\.\d)?s$", out, re.M), out
    snap = json.loads(cli(db_url, "status", "--json")[1])
    assert (snap["counts"]["in_progress"], snap["claimed"]) == (3, 2)
    assert [(q["queue"], q["claimed"], q["running"]) for q in snap["queues"]] == [
        ("default", 2, 1)]
    assert [(t["task"], t["claimed"], t["running"]) for t in snap["tasks"]] == [(None, 2, 1)]
    assert [(h["tasks"], h["claimed"], h["running"]) for h in snap["holders"]] == [(3, 2, 1)]

    # Their handlers start (the process writes started_at): running.
    query(db, "UPDATE tasks SET started_at = now() WHERE id = ANY(%s)", (claimed,))
    out = cli(db_url, "status")[1]
    assert re.search(r"^in_progress\s+3$", out, re.M), out
    assert re.search(r"^default\s+0\s+0\s+0\s+3\s+-$", out, re.M), out
    assert re.search(r"^host-a:101:abcd1234\s+0\s+3\s+\d+(\.\d)?s$", out, re.M), out


def test_tasks_prefetched_by_serve_show_as_claimed(db_url: str, db: Any,
                                                   serve: ServeFactory) -> None:
    """serve with FETCH_LIMIT set claims a round more than its workers (WORKER_COUNT 2:
    4 tasks); while the two slow handlers run, the other two wait in its local queue:
    status says 2 claimed and 2 running."""
    for n in range(10):
        add_task(db, f"slow {n}")
    p = serve(db_url, env={**FAST, "TASK_MIN_SECONDS": "60", "TASK_MAX_SECONDS": "60",
                           "WORKER_COUNT": "2", "FETCH_LIMIT": "10"})
    wait_until(lambda: query(db, "SELECT count(*) FILTER (WHERE started_at IS NULL), "
                                 "count(*) FILTER (WHERE started_at IS NOT NULL) FROM tasks "
                                 "WHERE status = 'in_progress'") == [(2, 2)],
               30, "2 tasks claimed and 2 running", [p], fail_on_exit=True)
    code, out, err = cli(db_url, "status")
    assert code == 0, err
    assert re.search(r"^in_progress\s+4\s+2 claimed, not started$", out, re.M), out
    assert re.search(r"^default\s+6\s+0\s+2\s+2\s+\S+$", out, re.M), out
    assert re.search(rf"^\S+:{p.pid}:\S+\s+2\s+2\s+\S+$", out, re.M), out
