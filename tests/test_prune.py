"""Deleting finished tasks: `taskworker prune` (which tasks, in batches of at most
--batch-size rows, each its own transaction) and `serve` pruning on its own with
PRUNE_AFTER. Tests assert the rows left in the table, the output and the exit status.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import psycopg2
import pytest
from invariants import add_task, query
from proc import CLI, child_env, cli
from waiting import wait_until


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


def record_deletes(db: Any) -> None:
    """Log every DELETE statement on tasks in `deletes`: its transaction and the ids it
    removed (a statement-level trigger with a transition table, so one row per statement)."""
    query(db, """
        CREATE TABLE deletes (
            n    serial PRIMARY KEY,
            txid bigint NOT NULL,
            ids  bigint[] NOT NULL
        );
        CREATE FUNCTION record_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO deletes (txid, ids)
            SELECT txid_current(), coalesce(array_agg(id ORDER BY id), '{}') FROM gone;
            RETURN NULL;
        END;
        $$;
        CREATE TRIGGER tasks_record_delete
            AFTER DELETE ON tasks REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION record_delete();
    """)


def test_prune_in_small_batches(db_url: str, db: Any) -> None:
    """--batch-size 4: 25 old tasks go in 7 DELETEs of at most 4 rows, lowest ids
    first, each in its own transaction; the recent tasks stay."""
    record_deletes(db)
    old, kept = [], []
    for n in range(30):  # old and recent interleaved, so a batch cannot be a plain id range
        if n % 6 == 5:
            kept.append(add_task(db, status="done", age="1 hour"))
        else:
            old.append(add_task(db, status="done", age="2 days"))
    code, out, err = cli(db_url, "prune", "--older-than", "1d", "--batch-size", "4")
    assert (code, out, err) == (0, "Deleted 25 tasks\n", "")
    assert sorted(i for i, in query(db, "SELECT id FROM tasks")) == kept
    statements = [(txid, ids) for txid, ids in
                  query(db, "SELECT txid, ids FROM deletes ORDER BY n") if ids]
    sizes = [len(ids) for _, ids in statements]
    assert all(size <= 4 for size in sizes), f"a DELETE took more than 4 rows: {sizes}"
    assert sizes == [4, 4, 4, 4, 4, 4, 1], f"rows per DELETE statement: {sizes}"
    txids = [txid for txid, _ in statements]
    assert len(set(txids)) == len(txids), f"DELETEs shared a transaction: {txids}"
    deleted = [i for _, ids in statements for i in ids]
    assert deleted == sorted(old), "not every old task deleted exactly once, lowest ids first"


def test_one_batch_at_a_time_across_processes(db_url: str, db: Any,
                                              history: dict[str, int]) -> None:
    """Every serve prunes, and a server shared by ten would spend ten backends on it:
    a batch runs only while no other process's batch does (a transaction advisory
    lock, tried). While a transaction holds that lock, `taskworker prune` deletes
    nothing and tries again; once it ends, it deletes what it should."""
    other = psycopg2.connect(db_url)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7261835003)")  # another "batch" runs
        proc = subprocess.Popen([*CLI, "prune", "--older-than", "7d"],
                                env=child_env({"DATABASE_URL": db_url}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: query(db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                         "query LIKE '%%pg_try_advisory_xact_lock(7261835003)%%'"
                                         " AND pid <> pg_backend_pid()")[0][0] > 0,
                       30, "the prune's first try")
            assert proc.poll() is None
            assert len(remaining(db, history)) == len(history)  # nothing deleted meanwhile
            other.commit()  # that batch ends
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    finally:
        other.close()
    assert (proc.returncode, out, err) == (0, "Deleted 3 tasks\n", "")
    assert remaining(db, history) == {"old_pending", "old_running", "recent_done",
                                      "recent_error", "recent_cancelled"}


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
