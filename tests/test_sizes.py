"""Payloads and results too large to handle: MAX_PAYLOAD_BYTES refused at enqueue,
checked at the claim for rows inserted by hand (before a payload is loaded), and
for results; completions sized by bytes and split when the server cancels them;
memory given back after a large task. Everything with real serve processes
against a real PostgreSQL, under the completion audit.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from invariants import (
    FAST,
    assert_each_done_line_once,
    completions,
    handler_env,
    insert_tasks,
    install_completion_audit,
    query,
    stop_all,
    tasks,
    wait_finished,
    wait_until,
)
from pgserver import free_port
from proc import CLI, ServeFactory, ServeProcess, child_env, cli, run_cli
from scrapes import scrape, value

import taskworker

MB = 1024 * 1024


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def memory_given_back(p: ServeProcess) -> int:
    """Wait for an idle serve to give the memory of its large tasks back (under
    100 MB); its RSS in kB. Fails saying how much it keeps if it never does."""
    return wait_until(lambda: (kb := memory_kb(p.pid)) < 100_000 and kb, 30,
                      lambda: f"the idle serve to give the memory back (it keeps "
                              f"{memory_kb(p.pid)} kB after the large tasks)", [p],
                      fail_on_exit=True)


def test_huge_payloads_inserted_by_hand_do_not_hold_back_the_small_ones(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """Six 60 MB payloads inserted by a plain INSERT (no enqueue to refuse them)
    and twenty small tasks, default MAX_PAYLOAD_BYTES: the claim ends the big ones
    in error without loading them, the small ones finish within seconds, nothing
    is left in progress, and the process never holds the big payloads."""
    install_completion_audit(db)
    query(db, "INSERT INTO tasks (payload) SELECT repeat(md5(n::text), 60 * 1024 * 1024 / 32)"
              " FROM generate_series(1, 6) AS n")
    small = insert_tasks(db, [f"small {n}" for n in range(20)])
    started = time.monotonic()
    port = free_port()
    p = serve(db_url, env={**FAST, "METRICS_PORT": str(port)})
    wait_finished(db, 30, [p])
    took = time.monotonic() - started
    peak = memory_kb(p.pid, "VmHWM")
    m = scrape(port)
    stop_all([p], signal.SIGINT)
    assert value(m, "taskworker_tasks_refused_total") == 6
    assert value(m, "taskworker_tasks_finished_total", status="done") == 20
    assert value(m, "taskworker_tasks_claimed_total") == 20

    rows = tasks(db)
    assert len(rows) == 26
    big = [r for r in rows.values() if r["id"] not in small]
    for row in big:
        assert (row["status"], row["attempts"], row["locked_by"]) == ("error", 0, None), row
        assert row["error"] == f"payload is {60 * MB} bytes, over MAX_PAYLOAD_BYTES={MB}"
    assert all(rows[i]["status"] == "done" for i in small)
    assert took < 15, f"the small tasks took {took:.1f}s"
    assert peak < 150_000, f"serve holds {peak} kB: it loaded the big payloads"
    assert completions(db) == {i: 1 for i in rows}  # every task ended exactly once
    out = p.output()
    assert_each_done_line_once([out])
    for row in big:
        assert (f"Task ID: {row['id']} failed: payload is {60 * MB} bytes, over "
                f"MAX_PAYLOAD_BYTES={MB}") in out
        assert f"Task ID: {row['id']} processed with status: error" in out
    assert "Traceback" not in out and "Statement interrupted" not in out


def test_a_small_payload_over_a_low_limit_is_refused_too(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """MAX_PAYLOAD_BYTES=100 and a 200-byte payload inserted by hand: small enough
    to come with the claim, it is still refused, never run (it was run once)."""
    over, under = insert_tasks(db, ["x" * 200, "y" * 50])
    p = serve(db_url, env={**FAST, "MAX_PAYLOAD_BYTES": "100"})
    wait_finished(db, 30, [p])
    stop_all([p], signal.SIGINT)
    rows = tasks(db)
    assert (rows[over]["status"], rows[over]["attempts"], rows[over]["result"]) == \
        ("error", 0, None), rows[over]
    assert rows[over]["error"] == "payload is 200 bytes, over MAX_PAYLOAD_BYTES=100"
    assert rows[under]["status"] == "done"
    assert f"Processing task ID: {over}" not in p.output()


@pytest.mark.slow
def test_large_results_are_written_and_the_memory_given_back(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """With MAX_PAYLOAD_BYTES raised to 64 MB, 60 MB payloads run: their 60 MB
    results are written in batches of their own beside the small tasks', and the
    idle process gives the memory back (libpq's buffers, malloc's free pages)."""
    install_completion_audit(db)
    query(db, "INSERT INTO tasks (payload) SELECT repeat(md5(n::text), 60 * 1024 * 1024 / 32)"
              " FROM generate_series(1, 2) AS n")
    insert_tasks(db, [f"small {n}" for n in range(20)])
    p = serve(db_url, env={**FAST, "MAX_PAYLOAD_BYTES": "64MB"})
    wait_finished(db, 60, [p])
    # The completer gives the memory back after its batch: wait for that, and
    # fail (saying how much it keeps) if it never does.
    idle = memory_given_back(p)
    stop_all([p], signal.SIGINT)
    rows = tasks(db)
    assert {r["status"] for r in rows.values()} == {"done"}
    assert all(r["result"] == r["payload"][::-1] for r in rows.values())
    assert completions(db) == {i: 1 for i in rows}
    assert idle < 100_000


@pytest.mark.slow
def test_a_large_task_given_back_unstarted_is_not_kept_by_its_worker(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """A 60 MB task's first claim takes longer than its lease allows (a trigger
    makes it last 2.5s of LEASE_SECONDS=3): the worker that takes it gives it
    back unstarted, and another worker runs its next claim. The idle process
    then gives the memory back: the worker that gave it back keeps no
    reference to the payload (it kept it until its next task, that is for ever
    in an idle process: 109 MB instead of less than 100 MB, once in CI)."""
    install_completion_audit(db)
    query(db, """
        CREATE TABLE slowed (task_id bigint PRIMARY KEY);
        CREATE FUNCTION slow_first_claim() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM slowed WHERE task_id = NEW.id) THEN
                INSERT INTO slowed VALUES (NEW.id);
                PERFORM pg_sleep(2.5);
            END IF;
            RETURN NEW;
        END; $$;
        CREATE TRIGGER tasks_slow_first_claim BEFORE UPDATE ON tasks FOR EACH ROW
            WHEN (OLD.status = 'pending' AND NEW.status = 'in_progress')
            EXECUTE FUNCTION slow_first_claim();""")
    query(db, "INSERT INTO tasks (payload) SELECT repeat(md5('big'), 60 * 1024 * 1024 / 32)")
    p = serve(db_url, env={**FAST, "MAX_PAYLOAD_BYTES": "64MB"})
    wait_finished(db, 60, [p])
    idle = memory_given_back(p)
    stop_all([p], signal.SIGINT)
    out = p.output()
    given_back = re.search(r"\[Worker (\d+)\] Task ID: \d+ not started: its lease would run "
                           r"out unrenewed; giving it back", out)
    ran = re.search(r"\[Worker (\d+)\] Processing task ID: \d+", out)
    assert given_back and ran, out
    assert given_back.group(1) != ran.group(1), out  # (another worker ran it: see above)
    (row,) = tasks(db).values()
    assert row["status"] == "done" and row["result"] == row["payload"][::-1]
    assert completions(db) == {row["id"]: 1}
    assert idle < 100_000


@pytest.mark.slow
def test_a_large_task_that_blocks_the_process_is_not_kept_by_the_monitor(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    """A 60 MB task whose handler blocks the process for 2s: the monitor names
    its worker and task (read from the worker's variables), and the idle process
    still gives the memory back. (Before Python 3.13 that read left a copy of
    the worker's variables in its frame, which kept the payload alive for good.)"""
    query(db, "INSERT INTO tasks (payload) SELECT repeat(md5('big'), 60 * 1024 * 1024 / 32)")
    p = serve(db_url, env=handler_env("spin", **{**FAST, "LEASE_SECONDS": "30"},
                                      MAX_PAYLOAD_BYTES="64MB", TEST_SPIN="2"))
    wait_finished(db, 60, [p])
    idle = memory_given_back(p)
    stop_all([p], signal.SIGINT)
    (row,) = tasks(db).values()
    assert row["status"] == "done" and row["result"] == row["payload"][::-1]
    assert re.search(rf"\[Worker \d+\] Task ID: {row['id']} \(at \S+ in \w+\) has blocked "
                     r"the whole process", p.output()), p.output()
    assert idle < 100_000


def test_a_result_over_the_limit_fails_its_task(db_url: str, db: Any,
                                                serve: ServeFactory) -> None:
    ids = insert_tasks(db, ["one", "two"])
    p = serve(db_url, env=handler_env("big_result", **FAST, MAX_PAYLOAD_BYTES="1kB",
                                      TEST_RESULT_BYTES="1025"))
    wait_finished(db, 30, [p])
    stop_all([p], signal.SIGINT)
    for task_id in ids:
        row = tasks(db)[task_id]
        assert (row["status"], row["result"]) == ("error", None), row
        assert row["error"] == "ValueError: result is 1025 bytes, over MAX_PAYLOAD_BYTES=1024"


def test_enqueue_refuses_a_payload_over_the_limit(db_url: str, db: Any) -> None:
    env = {"DATABASE_URL": db_url, "MAX_PAYLOAD_BYTES": "10"}
    code, out, err = run_cli(["enqueue", "fine", "x" * 11], env=env)
    assert (code, out) == (1, "")
    assert err.strip() == ("Error: payload is 11 bytes, over MAX_PAYLOAD_BYTES=10; "
                           "nothing was enqueued")
    code, out, err = run_cli(["enqueue", "-"], env=env, input="fine\n" + "x" * 11 + "\n")
    assert code == 1
    assert err.strip() == ("Error: line 2 is 11 bytes, over MAX_PAYLOAD_BYTES=10; "
                           "nothing was enqueued")
    code, out, err = run_cli(["enqueue", "-"], env=env, input="fine\nlonger than ten\n")
    assert code == 1  # read no further than the limit: its size is not known
    assert err.strip() == ("Error: line 2 is more than 10 bytes, over MAX_PAYLOAD_BYTES=10; "
                           "nothing was enqueued")
    assert tasks(db) == {}
    assert cli(db_url, "enqueue", "x" * 11)[0] == 0  # the default limit is 1 MB
    with pytest.raises(ValueError, match=r"^payload is 1048577 bytes, over "
                                         r"MAX_PAYLOAD_BYTES=1048576$"):
        taskworker.enqueue(db, "é" + "x" * (MB - 1))


# Runs a command and prints its peak RSS in kB (measured from a small parent: a
# child forked from pytest would count pytest's memory as its own until its exec).
PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def test_enqueue_reads_a_long_line_no_further_than_the_limit(db_url: str, db: Any,
                                                             tmp_path: Path) -> None:
    """`enqueue -` given a 100 MB line (MAX_PAYLOAD_BYTES is 1 MB) refuses it
    after reading 1 MB of it, instead of after holding all of it, three times
    over (a 1.2 GB line took 9 s and 3.6 GB before its refusal)."""
    lines = tmp_path / "lines.txt"
    with open(lines, "wb") as f:
        f.write(b"first\n")
        for _ in range(100):
            f.write(b"x" * MB)
        f.write(b"\nlast\n")
    with open(lines, "rb") as stdin:
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, *CLI, "enqueue", "-"],
                              stdin=stdin, capture_output=True, text=True, cwd=tmp_path,
                              env=child_env({"DATABASE_URL": db_url}), timeout=60)
    assert done.returncode == 1, done
    assert done.stderr == (f"Error: line 2 is more than {MB} bytes, over MAX_PAYLOAD_BYTES="
                           f"{MB}; nothing was enqueued\n")
    assert int(done.stdout) < 100 * 1024, f"peak RSS {done.stdout.strip()} kB"
    assert tasks(db) == {}


def test_a_completion_cancelled_by_statement_timeout_is_split(db_url: str, db: Any,
                                                              serve: ServeFactory) -> None:
    """A trigger makes each completed row cost 60 ms and STATEMENT_TIMEOUT is
    0.2 s: a batch of more than three outcomes is cancelled, split in halves
    until it fits, and every task is written once; none is held back."""
    install_completion_audit(db)
    query(db, """
        CREATE FUNCTION slow_completion() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.06); RETURN NEW; END; $$;
        CREATE TRIGGER tasks_slow_completion BEFORE UPDATE ON tasks FOR EACH ROW
            WHEN (NEW.status = 'done') EXECUTE FUNCTION slow_completion();""")
    ids = insert_tasks(db, [f"task {n}" for n in range(40)])
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "20", "FETCH_LIMIT": "40",
                           "STATEMENT_TIMEOUT": "0.2"})
    wait_finished(db, 60, [p])
    stop_all([p], signal.SIGINT)
    out = p.output()
    assert re.search(r"Writing \d+ outcomes took longer than STATEMENT_TIMEOUT; writing them "
                     r"in two halves", out), out
    assert completions(db) == {i: 1 for i in ids}
    assert {r["status"] for r in tasks(db).values()} == {"done"}
    assert_each_done_line_once([out])
    assert len(re.findall(r"processed with status: done", out)) == 40
    assert "Statement interrupted (completer)" not in out


@pytest.mark.slow
def test_shutdown_says_database_unreachable_only_when_it_is(db_url: str, db: Any,
                                                            serve: ServeFactory) -> None:
    """An outcome that cannot be written at shutdown because the database is slow
    to take it (here: a lock held elsewhere) is not blamed on an unreachable
    database."""
    ids = insert_tasks(db, ["locked"])
    p = serve(db_url, env={**FAST, "TASK_MIN_SECONDS": "1", "TASK_MAX_SECONDS": "1",
                           "STATEMENT_TIMEOUT": "60"})
    p.wait_for(r"Processing task ID")
    db.autocommit = False
    with db.cursor() as cur:  # hold the row: the completion waits for the lock
        cur.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (ids[0],))
    try:
        p.wait_for(r"Finished task ID")
        p.signal(signal.SIGINT)
        p.wait_for(r"Could not write 1 outcomes", timeout=30)
    finally:
        db.rollback()
        db.autocommit = True
    assert p.wait(30) == 0
    out = p.output()
    assert "database unreachable" not in out, out
    assert "Could not write 1 outcomes: the database did not take them within 10s" in out
