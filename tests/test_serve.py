"""`taskworker serve` end to end, as a subprocess: the seed's 20 tasks processed
with the original's log lines, Ctrl+C / SIGTERM while tasks run, a second Ctrl+C,
and the two bad states (no tasks table, no database).
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import insert_tasks, query, stray_traceback, wait_until
from pgserver import UNREACHABLE_URL
from proc import ServeFactory, ServeProcess, run_cli

Conn = psycopg2.extensions.connection

SEED_SQL = (Path(__file__).resolve().parent.parent / "seed" / "seed_tasks.sql").read_text()
STAMP = r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} "
PROCESSING = re.compile(
    rf"^{STAMP}\[Worker (\d+)\] Processing task ID: (\d+) with payload: (.*)$", re.MULTILINE)
PROCESSED = re.compile(
    rf"^{STAMP}\[Worker (\d+)\] Task ID: (\d+) processed with status: (\w+)$", re.MULTILINE)
FAST = {"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0.2"}
SHUTDOWN_LINES = ("Shutdown signal received, stopping task processor gracefully...",
                  "All workers have completed, shutdown successful")



def rows(db: Conn) -> dict[int, tuple]:
    """id -> (payload, status, result, error, attempts, locked_by, updated_at > created_at)."""
    with db.cursor() as cur:
        cur.execute("SELECT id, payload, status, result, error, attempts, locked_by,"
                    " updated_at > created_at FROM tasks ORDER BY id")
        return {r[0]: r[1:] for r in cur.fetchall()}


def statuses(db: Conn) -> Counter:
    return Counter(r[1] for r in rows(db).values())


def processing(out: str) -> dict[int, tuple[int, str]]:
    """task id -> (worker, payload) from the Processing lines; each id at most once."""
    found = [(int(task), int(worker), payload) for worker, task, payload in PROCESSING.findall(out)]
    ids = [task for task, _, _ in found]
    assert len(ids) == len(set(ids)), f"a task was processed twice:\n{out}"
    return {task: (worker, payload) for task, worker, payload in found}


def processed(out: str) -> dict[int, tuple[int, str]]:
    """task id -> (worker, status) from the processed lines; each id at most once."""
    found = [(int(task), int(worker), status) for worker, task, status in PROCESSED.findall(out)]
    ids = [task for task, _, _ in found]
    assert len(ids) == len(set(ids)), f"a task was reported twice:\n{out}"
    return {task: (worker, status) for task, worker, status in found}


def stop(p: ServeProcess, sig: int = signal.SIGINT, timeout: float = 30) -> str:
    """Send `sig`, expect exit 0 and the shutdown lines; return the whole log."""
    p.signal(sig)
    code = p.wait(timeout)
    out = p.output()
    assert code == 0, out
    for line in SHUTDOWN_LINES:
        assert line in out, out
    assert not stray_traceback(out), out
    return out


FINISHED = re.compile(rf"^{STAMP}\[Worker (\d+)\] Finished task ID: (\d+) in \S+$", re.MULTILINE)
WORKER_LINE = re.compile(
    r"\[Worker (\d+)\] (?:(Processing) task ID: (\d+)|(Finished) task ID: (\d+)"
    r"|Task ID: (\d+) (processed) with status)")


def assert_each_worker_reads_in_order(out: str) -> None:
    """Following one worker's lines, it runs one task at a time: Processing X,
    Finished X, then the next; and X's `processed with status` line (written
    once the outcome has committed) comes after its Finished line."""
    running: dict[int, int] = {}  # worker -> task it is running
    finished: set[int] = set()
    for m in WORKER_LINE.finditer(out):
        worker = int(m.group(1))
        if m.group(2):
            assert worker not in running, f"worker {worker} started {m.group(3)} while " \
                                          f"running {running.get(worker)}:\n{out}"
            running[worker] = int(m.group(3))
        elif m.group(4):
            assert running.pop(worker, None) == int(m.group(5)), out
            finished.add(int(m.group(5)))
        else:
            assert int(m.group(6)) in finished, f"{m.group(6)} processed before finished:\n{out}"


def assert_shutdown_lines(out: str, workers: int) -> None:
    for n in range(1, workers + 1):
        assert f"[Worker {n}] Received shutdown signal" in out, out
    shutdown = out.index(SHUTDOWN_LINES[0])
    assert out.rstrip().endswith(SHUTDOWN_LINES[1]), out
    assert out.index(SHUTDOWN_LINES[1]) > shutdown


# --- processing


def test_serve_processes_the_seed(db_url: str, db: Conn, serve: ServeFactory) -> None:
    with db.cursor() as cur:
        cur.execute(SEED_SQL)
    ids = sorted(rows(db))
    assert len(ids) == 20

    p = serve(db_url, env=FAST)  # TASK_FAILURE_RATE: the default 0.1
    wait_until(lambda: len(processed(p.output())) == 20, 40, "20 processed lines", [p],
               fail_on_exit=True)
    out = stop(p)

    lines = out.splitlines()
    assert all(re.match(STAMP, line) for line in lines), out
    assert re.search(rf"^{STAMP}Connecting to database: postgresql?://", out, re.MULTILINE)
    assert re.search(rf"^{STAMP}Starting task processor with 5 workers, fetching every 5s$",
                     out, re.MULTILINE), out
    for n in range(1, 6):
        assert re.search(rf"^{STAMP}Starting worker {n}$", out, re.MULTILINE), out
    fetched = [int(n) for n in re.findall(rf"^{STAMP}Fetched (\d+) tasks$", out, re.MULTILINE)]
    assert sum(fetched) == 20, out
    assert_shutdown_lines(out, 5)

    started, finished = processing(out), processed(out)
    assert sorted(started) == ids and sorted(finished) == ids
    assert sorted(int(task) for _, task in FINISHED.findall(out)) == ids
    assert_each_worker_reads_in_order(out)
    table = rows(db)
    for task_id in ids:
        payload, status, result, error, attempts, locked_by, moved = table[task_id]
        worker, logged_payload = started[task_id]
        assert 1 <= worker <= 5
        assert logged_payload == payload
        assert finished[task_id] == (worker, status)
        assert (attempts, locked_by, moved) == (1, None, True), table[task_id]
        if status == "done":
            assert (result, error) == (payload[::-1], None)
        else:
            assert status == "error", table[task_id]
            assert result is None and error, table[task_id]
    assert [r[0] for r in table.values()] == [f"Test task {n}" for n in range(1, 21)]


def test_unicode_payload_is_reversed_by_code_point(db_url: str, db: Conn,
                                                   serve: ServeFactory) -> None:
    [task_id] = insert_tasks(db, ["naïve ✓"])
    p = serve(db_url, env={**FAST, "TASK_FAILURE_RATE": "0"})
    p.wait_for(rf"Task ID: {task_id} processed with status: done$")
    out = stop(p)
    assert f"Processing task ID: {task_id} with payload: naïve ✓" in out
    assert rows(db)[task_id][1:3] == ("done", "✓ evïan")


@pytest.mark.parametrize(("rate", "expected"), [("1", "error"), ("0", "done")])
def test_failure_rate_all_or_nothing(db_url: str, db: Conn, serve: ServeFactory,
                                     rate: str, expected: str) -> None:
    ids = insert_tasks(db, [f"job {n}" for n in range(12)])
    p = serve(db_url, env={**FAST, "TASK_FAILURE_RATE": rate})
    wait_until(lambda: len(processed(p.output())) == len(ids), 30, "all processed lines", [p],
               fail_on_exit=True)
    out = stop(p)
    assert {status for _, status in processed(out).values()} == {expected}
    for payload, status, result, error, *_ in rows(db).values():
        assert status == expected
        if expected == "done":
            assert (result, error) == (payload[::-1], None)
        else:
            assert result is None and error


# --- shutdown


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_lets_running_tasks_finish(db_url: str, db: Conn, serve: ServeFactory,
                                          sig: int) -> None:
    ids = insert_tasks(db, [f"slow {n}" for n in range(20)])
    # FETCH_LIMIT set: a round of prefetch, so that claimed tasks wait in the local
    # queue (unset, a process prefetches nothing before it has measured a task rate).
    p = serve(db_url, env={"TASK_MIN_SECONDS": "2", "TASK_MAX_SECONDS": "3",
                           "TASK_FAILURE_RATE": "0", "FETCH_LIMIT": "10"})
    wait_until(lambda: len(processing(p.output())) >= 5, 30, "5 tasks running", [p],
               fail_on_exit=True)
    assert statuses(db)["in_progress"] > 5  # some claimed tasks wait in the local queue
    out = stop(p, sig, timeout=30)
    assert_shutdown_lines(out, 5)
    assert "Cancelling" not in out  # SHUTDOWN_TIMEOUT (30 s) was long enough

    started, finished = processing(out), processed(out)
    assert sorted(finished) == sorted(started)
    fetched = sum(int(n) for n in re.findall(rf"^{STAMP}Fetched (\d+) tasks$", out, re.MULTILINE))
    assert fetched > len(started), "no claimed task was waiting when the signal came"
    table = rows(db)
    assert set(table) == set(ids)
    for task_id, (payload, status, result, error, attempts, locked_by, _) in table.items():
        if task_id in started:  # was running: finished normally
            assert (status, result, error, attempts) == ("done", payload[::-1], None, 1)
        else:  # queued or never claimed: back to pending, attempt not counted
            assert (status, attempts, locked_by, error) == ("pending", 0, None, None), task_id
    counts = statuses(db)
    assert counts["pending"] > 0 and counts["in_progress"] == 0 and counts["error"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_second_signal_stops_at_once(db_url: str, db: Conn, serve: ServeFactory,
                                     sig: int) -> None:
    ids = insert_tasks(db, [f"long {n}" for n in range(10)])
    p = serve(db_url, env={"TASK_MIN_SECONDS": "20", "TASK_MAX_SECONDS": "30",
                           "TASK_FAILURE_RATE": "0", "SHUTDOWN_TIMEOUT": "300",
                           "LEASE_SECONDS": "6"})  # a heartbeat every 2 s
    wait_until(lambda: len(processing(p.output())) == 5, 30, "5 tasks running", [p],
               fail_on_exit=True)
    running = list(processing(p.output()))
    p.signal(sig)
    p.wait_for("Shutdown signal received")
    # After the first signal it waits for its running tasks: proof, a heartbeat
    # that renews their leases after the signal (a lease ending later than one
    # taken when the signal was seen), then the process still there.
    [(signalled,)] = query(db, "SELECT now() + interval '6 seconds'")
    wait_until(lambda: query(db, "SELECT bool_and(locked_until > %s) FROM tasks WHERE id = ANY(%s)",
                             (signalled, running))[0][0], 30,
               "a heartbeat after the signal (the running tasks' leases renewed)", [p],
               fail_on_exit=True)
    assert p.proc.poll() is None, "serve did not wait for its running tasks:\n" + p.output()

    out = stop(p, sig, timeout=15)  # far less than the 20-30 s tasks
    assert_shutdown_lines(out, 5)
    assert not processed(out), out
    table = rows(db)
    assert set(table) == set(ids)
    for task_id, (_, status, result, error, attempts, locked_by, _) in table.items():
        assert (status, result, error, attempts, locked_by) == ("pending", None, None, 0, None), \
            task_id


# --- bad state


def test_missing_table(empty_db_url: str) -> None:
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": empty_db_url}, timeout=30)
    assert code == 1, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and 'run "taskworker migrate" first' in lines[0], err
    assert "Traceback" not in out + err


def test_table_made_by_hand_without_migrations(empty_db_url: str) -> None:
    with psycopg2.connect(empty_db_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE tasks (id serial PRIMARY KEY, payload text, status text)")
    conn.close()
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": empty_db_url}, timeout=30)
    assert code == 1, (out, err)
    assert len(err.splitlines()) == 1 and 'run "taskworker migrate" first' in err, err


def test_role_that_cannot_read_the_tables(db_url: str, db: Conn) -> None:
    """A role that may connect but not read: one line naming the refusal, exit 1,
    for serve as for the other commands, and nothing claimed."""
    role = f"tw_no_read_{os.getpid()}"
    with db.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN")
    try:
        ids = insert_tasks(db, ["untouched"])
        url = psycopg2.extensions.make_dsn(db_url, user=role)
        for args in (["serve"], ["status"], ["seed"]):
            code, out, err = run_cli(args, env={"DATABASE_URL": url}, timeout=30)
            assert code == 1, (args, out, err)
            assert err.splitlines() == [
                "Error: database error: permission denied for table schema_migrations"], err
            assert "Traceback" not in out + err
        assert rows(db)[ids[0]][1] == "pending"
    finally:
        with db.cursor() as cur:
            cur.execute(f"DROP ROLE {role}")


def test_a_service_that_dies_stops_serve_saying_why(db_url: str, db: Conn,
                                                    serve: ServeFactory) -> None:
    """The pruner's DELETE is refused (by a trigger here): serve stops, gives back
    nothing wrongly, and its last line says what happened; exit status 1."""
    with db.cursor() as cur:
        cur.execute("""
            CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'deleting tasks is not allowed here'; END; $$;
            CREATE TRIGGER tasks_refuse_delete BEFORE DELETE ON tasks
                FOR EACH ROW EXECUTE FUNCTION refuse_delete();
            INSERT INTO tasks (payload, status, updated_at)
                VALUES ('old', 'done', now() - interval '1 day');""")
    p = serve(db_url, env={**FAST, "PRUNE_AFTER": "1h"})
    assert p.wait(30) == 1, p.output()
    out = p.output()
    assert not stray_traceback(out), out
    why = "pruner failed: RaiseException: deleting tasks is not allowed here"
    assert re.search(rf"^{STAMP}{why}; stopping$", out, re.MULTILINE), out
    assert out.splitlines()[-1].endswith(f"Stopped because the {why}; exit status 1"), out
    assert "shutdown successful" not in out, out


def _assert_cannot_connect(url: str, code: int, out: str, err: str) -> None:
    assert code == 1, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "cannot connect" in lines[0] and url.split("@")[1].split("/")[0] in lines[0]
    assert "Traceback" not in out + err


def test_unreachable_database() -> None:
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": UNREACHABLE_URL}, timeout=30)
    _assert_cannot_connect(UNREACHABLE_URL, code, out, err)


def test_database_that_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgres://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        code, out, err = run_cli(["serve"], env={"DATABASE_URL": url, "CONNECT_TIMEOUT": "1"},
                                 timeout=30)
    _assert_cannot_connect(url, code, out, err)
    assert "no answer within 1s" in err


def test_ctrl_c_with_running_tasks_says_how_long_it_waits_and_a_second_stops_them(
        db_url: str, db: Any, serve: Any) -> None:
    """Issue 25, item 11: the original's shutdown line, then how many tasks run, how
    long serve waits for them, and that a second Ctrl+C stops them now."""
    from invariants import handler_env

    ids = insert_tasks(db, ["long", "longer"])
    p = serve(db_url, env=handler_env("recording", **FAST, TEST_SLEEP="60",
                                      SHUTDOWN_TIMEOUT="45s", WORKER_COUNT="2"))
    wait_until(lambda: len(re.findall(r"Processing task ID", p.output())) == 2, 30,
               "both tasks to start", [p])
    p.signal(signal.SIGINT)
    p.wait_for(r"press Ctrl\+C again")
    out = p.output()
    assert re.search(r"Shutdown signal received, stopping task processor gracefully\.\.\.\n"
                     r"(.*\n)?.* Waiting up to 45s for 2 running tasks to finish; press "
                     r"Ctrl\+C again to stop them now \(given back to pending\)\n", out), out
    p.signal(signal.SIGINT)
    assert p.wait(20) == 0, p.output()
    assert "Cancelling 2 running tasks and giving them back to pending" in p.output()
    assert query(db, "SELECT DISTINCT status FROM tasks WHERE id = ANY(%s)", (ids,)) == [
        ("pending",)]
