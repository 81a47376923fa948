"""Orders of events between serve's greenlets that timing alone rarely shows,
driven step by step (tests/step_driver.py runs serve's own components on the
real database, the other greenlet's step run from a hook at the point where it
could run): no sleeps, the same order every run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from invariants import insert_tasks, tasks
from proc import child_env

HERE = Path(__file__).resolve().parent
HOLDER = "driver:1:giveup"


def drive(*args: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, str(HERE / "step_driver.py"), *args],
                          env=child_env(), capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    *lines, last = done.stdout.strip().splitlines()
    return "\n".join(lines), json.loads(last)


def test_a_claims_rows_are_not_given_back_as_orphans_while_they_are_handed_out(
        db_url: str, db: Any) -> None:
    """The completer's lane claims four tasks, one with a payload too large to
    come with the claim; while that payload loads, the completer's connection
    is opened again and the fetcher's loop checks for orphans. Every task
    handed to the workers must still be this process's in the table: given
    back, it would run here while another claim (of any process) runs it too."""
    ids = insert_tasks(db, ["small 1", "small 2", "x" * 300_000, "small 3"])
    log, out = drive("hand-out", db_url)
    handed = {t["id"]: t for t in out["handed"]}
    assert sorted(handed) == ids, (out, log)
    for task in handed.values():
        assert task["row"] == {"status": "in_progress", "mine": True, "fence": task["fence"]}, \
            (task, log)
    assert "Gave back" not in log, log
    rows = tasks(db)
    assert all(rows[i]["status"] == "in_progress" for i in ids), rows


@pytest.mark.parametrize("back_at", [1, 2, 3, 4, 5, 0])
def test_an_outcome_never_written_stays_unwritten_wherever_the_database_comes_back(
        pg_base_url: str, db_url: str, db: Any, back_at: int) -> None:
    """Shutdown gives up on the database (the connection's third check of
    `should_stop` says stop) while connections come back before, at, after, or
    never: each outcome is written as the task's result, or left unwritten (the
    task in progress, its lease to run out) and counted so; never stored as an
    error ("could not store result: Stopped"), never reported as a lease lost."""
    ids = insert_tasks(db, [f"t{n}" for n in range(5)])
    dbname = psycopg2.extensions.parse_dsn(db_url)["dbname"]
    log, stats = drive("give-up", db_url, pg_base_url, dbname, HOLDER, "3", str(back_at))
    rows = tasks(db)
    done = [i for i in ids if rows[i]["status"] == "done"]
    held = [i for i in ids if rows[i]["status"] == "in_progress"]
    assert sorted(done + held) == ids, rows
    assert all(rows[i]["result"] == f"result of {i}" for i in done), rows
    assert all(rows[i]["locked_by"] == HOLDER for i in held), rows
    assert (stats["done"], stats["unwritten"], stats["lease_lost"], stats["error"]) == \
        (len(done), len(held), 0, 0), (stats, log)
    assert "could not store result" not in log and "lease lost" not in log, log
    if back_at in (1, 2):  # back before the give-up: everything is written
        assert (stats["ended"], done) == ("written", ids), (stats, log)


def test_a_claim_sent_again_after_an_outage_gives_its_tasks_a_full_lease(
        pg_base_url: str, db_url: str, db: Any) -> None:
    """The fetcher's claim meets a cut connection and is sent again, and again,
    until the database takes connections, longer than LEASE_SECONDS=1 later. Its
    tasks' leases count from the send that succeeded: a worker starts them,
    instead of giving them back as "not started: its lease would run out
    unrenewed" (the time of the first send was kept)."""
    ids = insert_tasks(db, ["a", "b"])
    dbname = psycopg2.extensions.parse_dsn(db_url)["dbname"]
    log, out = drive("outage-claim", db_url, pg_base_url, dbname)
    assert out["outage"] > 1.5 and out["retries"] >= 10, (out, log)
    assert sorted(t["id"] for t in out["handed"]) == ids, (out, log)
    assert all(t["would_start"] and t["lease_left"] > 0.5 for t in out["handed"]), (out, log)
