"""`taskworker schedule`: the periodic tasks the running processes registered (rows
of taskworker_processes, inserted here as serve processes write them) and those
--tasks registers, with their last tick and run and their next tick."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from invariants import add_task, query
from proc import cli, run_cli

NOT_RUNNING = "none: no running process registers it"


def process(db: Any, holder: str, schedules: dict[str, str], seen: str = "0s") -> None:
    """A serve process's row, last seen `seen` ago (lease 30 s: live for 60 s)."""
    query(db, "INSERT INTO taskworker_processes (holder, host, pid, tasks, default_handler, "
              "schedules, lease_seconds, seen_at) VALUES (%s, 'host', 1, %s, false, %s, 30, "
              "now() - %s::interval)", (holder, list(schedules), json.dumps(schedules), seen))


def tick(db: Any, task: str, at: datetime, task_id: int | None) -> None:
    query(db, "INSERT INTO taskworker_ticks (task, tick, task_id) VALUES (%s, %s, %s)",
          (task, at, task_id))


def utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_every(seconds: int, now: datetime) -> datetime:
    return datetime.fromtimestamp((int(now.timestamp()) // seconds + 1) * seconds, UTC)


def next_hour_in(zone: str, now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(zone)).replace(minute=0, second=0, microsecond=0)
    return (local + timedelta(hours=1)).astimezone(UTC)


def test_lists_live_schedules_with_last_and_next_tick(db_url: str, db: Any,
                                                      tmp_path: Path) -> None:
    process(db, "host-a:1:aaaa", {"report": "cron 0 * * * *", "tick30": "every 30s"})
    process(db, "host-b:2:bbbb", {"tick30": "every 30s"})
    process(db, "host-c:3:cccc", {"stale": "every 1s"}, seen="10 minutes")  # gone
    done = add_task(db, status="done", task="report")
    (hour,) = query(db, "SELECT date_trunc('hour', now())")[0]
    tick(db, "report", hour - timedelta(hours=1), None)
    tick(db, "report", hour, done)
    tick(db, "tick30", hour, None)  # skipped: its previous run was still live
    tick(db, "stale", hour, 10**9)  # its task pruned since
    (tmp_path / "localmod.py").write_text(
        "from taskworker.registry import task\n\n\n"
        "@task('local', cron='0 9 * * *')\n"
        "def local(payload):\n"
        "    return payload\n")

    before = datetime.now(UTC)
    code, out, err = run_cli(["schedule", "--tasks", "localmod"], cwd=str(tmp_path),
                             env={"DATABASE_URL": db_url, "CRON_TZ": "Asia/Kolkata"})
    after = datetime.now(UTC)
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert re.fullmatch(r"TASK +SCHEDULE +PROCESSES +LAST TICK +LAST RUN +NEXT TICK",
                        lines[0]), out
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in lines[1:]}
    assert sorted(rows) == ["local", "report", "stale", "tick30"]
    # CRON_TZ=Asia/Kolkata (UTC+5:30): on the hour there is half past in UTC.
    assert rows["report"][:5] == ["report", "cron 0 * * * *", "1", utc(hour), f"ID {done} done"]
    assert rows["report"][5] in {utc(next_hour_in("Asia/Kolkata", t)) for t in (before, after)}
    assert rows["tick30"][:5] == ["tick30", "every 30s", "2", utc(hour), "skipped"]
    assert rows["tick30"][5] in {utc(next_every(30, t)) for t in (before, after)}
    # Only ticks left of a schedule no live process registers: it enqueues nothing.
    assert rows["stale"] == ["stale", "?", "0", utc(hour), f"ID {10**9} pruned", NOT_RUNNING]
    # Registered by --tasks here, but by no running process.
    assert rows["local"] == ["local", "cron 0 9 * * *", "0", "-", "-", NOT_RUNNING]

    code, out, err = run_cli(["schedule", "--json"], env={"DATABASE_URL": db_url})
    assert (code, err) == (0, "")
    listed = {row["task"]: row for row in json.loads(out)}
    assert sorted(listed) == ["report", "stale", "tick30"]
    assert listed["report"] == {
        "task": "report", "schedule": "cron 0 * * * *", "processes": 1,
        "last_tick": utc(hour), "last_task_id": done, "last_status": "done",
        "next_tick": listed["report"]["next_tick"]}
    assert listed["report"]["next_tick"] in {utc(next_hour_in("UTC", t))
                                             for t in (before, datetime.now(UTC))}
    assert listed["stale"]["next_tick"] is None


def test_no_periodic_task(db_url: str) -> None:
    code, out, err = cli(db_url, "schedule")
    assert (code, out, err) == (
        0, "No periodic task: none registered by a running process or by --tasks.\n", "")


def test_a_module_that_cannot_be_loaded_is_one_line(db_url: str) -> None:
    code, out, err = cli(db_url, "schedule", "--tasks", "no_such_module")
    assert (code, out) == (2, "")
    assert err == ("Error: cannot load TASK_MODULES module 'no_such_module': "
                   "ModuleNotFoundError: No module named 'no_such_module'\n")
