"""A handler's writes and its task's outcome in one transaction (part 21):
`with taskworker.transaction() as conn:` inside a task.

Every effect is a row of `effects` keyed by the task's id, WITHOUT a unique
constraint: a write made twice would show as two rows. Whatever happens to the
processes (kill -9 between the writes and the commit, a process frozen past its
lease, a restart of PostgreSQL), each task that ends done has exactly one row.

The handler marks, after its write and before it returns, a file named after
the task and the run; while the file `hold` exists it then waits, which is
where the tests strike.
"""
from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import FAST, backends_of, query, stop_all, wait_finished, wait_until
from pgserver import cluster, database_url, restart
from proc import cli

APP = '''
import os
import time

import taskworker


def wait_while_held(folder, task_id):
    mark = f"written-{task_id}-{os.getpid()}-{time.monotonic_ns()}"  # one per run
    open(os.path.join(folder, mark), "w").close()
    while os.path.exists(os.path.join(folder, "hold")):
        time.sleep(0.02)


@taskworker.task("effect")
def effect(folder, fail=False):
    task = taskworker.current_task()
    with taskworker.transaction() as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO effects (task_id, pid) VALUES (%s, %s)",
                        (task.id, os.getpid()))
    wait_while_held(folder, task.id)
    if fail:
        raise RuntimeError("after the write")
    return "written"


@taskworker.task("plain")
def plain(n):
    return n * 2
'''

EFFECTS = "CREATE TABLE effects (task_id bigint NOT NULL, pid int NOT NULL)"
SHORT_LEASE = {**FAST, "LEASE_SECONDS": "2", "FETCH_INTERVAL": "0.2"}
DURABLE = ("synchronous_commit=on",)  # a crash keeps every acknowledged commit


def setup(db: Any, tmp_path: Path, hold: bool = True) -> tuple[Path, list[str]]:
    """The effects table, the application module, and the folder the handler
    marks (with `hold`: handlers wait after their write)."""
    query(db, EFFECTS)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    (cwd / "app.py").write_text(APP)
    marks = tmp_path / "marks"
    marks.mkdir()
    if hold:
        (marks / "hold").write_text("")
    return marks, ["--tasks", "app"]


def enqueue_effects(db: Any, marks: Path, count: int, fail: bool = False) -> list[int]:
    arguments = f'{{"args": ["{marks}"], "kwargs": {{"fail": {str(fail).lower()}}}}}'
    return [row[0] for row in query(
        db, "INSERT INTO tasks (task, format, arguments) SELECT 'effect', 2, %s::jsonb "
            "FROM generate_series(1, %s) RETURNING id", (arguments, count))]


def written_by(marks: Path) -> Counter[int]:
    """How many runs wrote (not necessarily committed), per task id."""
    return Counter(int(p.name.split("-")[1]) for p in marks.glob("written-*"))


def effects_per_task(db: Any) -> Counter[int]:
    return Counter(task_id for (task_id,) in query(db, "SELECT task_id FROM effects"))


def assert_exactly_once(db: Any, ids: list[int]) -> None:
    statuses = dict(query(db, "SELECT id, status FROM tasks WHERE id = ANY(%s)", (ids,)))
    assert set(statuses.values()) == {"done"}, statuses
    assert effects_per_task(db) == Counter({i: 1 for i in ids})


def test_writes_and_outcome_commit_together_a_failure_rolls_them_back_and_the_pool_is_bounded(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    marks, args = setup(db, tmp_path)
    ids = enqueue_effects(db, marks, 6)
    failing = enqueue_effects(db, marks, 1, fail=True)
    plain = query(db, "INSERT INTO tasks (task, format, arguments) SELECT 'plain', 2, "
                      "jsonb_build_object('args', jsonb_build_array(n)) "
                      "FROM generate_series(1, 4) AS n RETURNING id")
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "6", "TRANSACTION_POOL_SIZE": "2"},
              args=args)
    # Two bound transactions at once at most: two handlers hold theirs open.
    wait_until(lambda: len(written_by(marks)) == 2, 30, "two handlers to write", [p])
    connections = query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND application_name = "
                            "'taskworker transaction'")[0][0]
    assert connections == 2
    assert not effects_per_task(db)  # written, not yet committed: invisible
    (marks / "hold").unlink()
    wait_finished(db, 60, [p])
    stop_all([p], signal.SIGINT)
    assert_exactly_once(db, ids)
    # The failure rolled its write back; the failure itself is written apart.
    assert query(db, "SELECT status, error FROM tasks WHERE id = %s", (failing[0],)) == [
        ("error", "RuntimeError: after the write")]
    assert failing[0] not in effects_per_task(db)
    assert query(db, "SELECT array_agg(return_value ORDER BY id) FROM tasks WHERE "
                     "task = 'plain'") == [([2, 4, 6, 8],)]
    assert len(plain) == 4 and "processed with status: done" in p.output()


def test_kill_9_between_the_writes_and_the_commit_leaves_each_effect_once(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    marks, args = setup(db, tmp_path)
    ids = enqueue_effects(db, marks, 8)
    env = {**SHORT_LEASE, "WORKER_COUNT": "3"}
    for round_no in range(1, 4):  # each round: three handlers wrote, then kill -9
        p = serve(db_url, env=env, args=args)
        wait_until(lambda n=round_no: sum(written_by(marks).values()) >= 3 * n, 30,
                   f"three handlers of round {round_no} to write", [p])
        p.signal(signal.SIGKILL)
        p.wait()
        assert not effects_per_task(db)  # every write died with its transaction
    (marks / "hold").unlink()
    last = serve(db_url, env=env, args=args)
    wait_finished(db, 60, [last])
    stop_all([last], signal.SIGINT)
    assert_exactly_once(db, ids)
    rescued = query(db, "SELECT count(*) FROM tasks WHERE rescues + unstarted_rescues > 0 "
                        "AND id = ANY(%s)", (ids,))[0][0]
    assert rescued >= 3  # the kills struck tasks that had written
    assert max(written_by(marks).values()) >= 2  # and those ran again


def test_a_process_frozen_past_its_lease_cannot_commit_its_writes(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    marks, args = setup(db, tmp_path)
    ids = enqueue_effects(db, marks, 2)
    env = {**SHORT_LEASE, "WORKER_COUNT": "2"}
    frozen = serve(db_url, env=env, args=args)
    wait_until(lambda: len(written_by(marks)) == 2, 30, "both handlers to write", [frozen])
    backends = backends_of(db, frozen.pid)
    frozen.signal(signal.SIGSTOP)
    try:
        other = serve(db_url, env=env, args=args)
        # The rescuer runs both again; they write, and wait on the hold too.
        wait_until(lambda: all(n == 2 for n in written_by(marks).values()), 30,
                   "the rescuer's runs to write", [other])
        (marks / "hold").unlink()
        wait_finished(db, 30, [other])
        assert_exactly_once(db, ids)
        assert {pid for _, pid in query(db, "SELECT task_id, pid FROM effects")} == {other.pid}
    finally:
        frozen.signal(signal.SIGCONT)
    # Resumed, the frozen process's handlers return (or its lease guard stops
    # them): its transactions roll back, its writes never land.
    wait_until(lambda: not query(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = "
                                     "ANY(%s) AND state = 'idle in transaction'",
                                 (backends,))[0][0]
               and "lease lost" in frozen.output(), 30,
               "the frozen process to give up its transactions", [frozen])
    stop_all([frozen, other], signal.SIGINT)
    assert_exactly_once(db, ids)


@pytest.mark.slow
def test_a_restart_of_postgresql_in_the_middle_leaves_each_effect_once(
        serve: Any, tmp_path: Path) -> None:
    # synchronous_commit on: the tasks enqueued before the crash must be in the
    # WAL when it comes (with the throwaway default, off, a run lost them once).
    with cluster(settings=DURABLE) as server:
        url = database_url(server.url, "postgres")
        code, _, err = cli(url, "migrate")
        assert code == 0, err
        db = psycopg2.connect(url)
        db.autocommit = True
        try:
            marks, args = setup(db, tmp_path)
            ids = enqueue_effects(db, marks, 4)
            env = {**SHORT_LEASE, "WORKER_COUNT": "4", "LEASE_SECONDS": "5"}
            p = serve(url, env=env, args=args)
            wait_until(lambda: len(written_by(marks)) == 4, 30, "the handlers to write", [p])
        finally:
            db.close()
        restart(server)  # immediate: every open transaction is lost (commits kept: DURABLE)
        (marks / "hold").unlink()
        db = psycopg2.connect(url)
        db.autocommit = True
        try:
            wait_finished(db, 90, [p])
            stop_all([p], signal.SIGINT)
            assert_exactly_once(db, ids)
            assert min(written_by(marks).values()) >= 2  # each ran again after the restart
        finally:
            db.close()


def test_the_fence_refuses_a_taken_over_hold_and_a_lost_connection_gives_the_task_back(
        db_url: str, db: Any) -> None:
    """The three ends of a bound transaction, driven step by step on the real
    database: committed with its outcome; refused by the fence after another
    process took the task over (the handler's write vanishes); lost with its
    connection before the commit (the task is given back, nothing written)."""
    from taskworker.processor.bound import Bound, TransactionPool
    from taskworker.processor.outcomes import DONE, GIVE_BACK, Outcome
    from taskworker.settings import load
    from taskworker.store import tasks as store
    from taskworker.store.database import Direct

    query(db, EFFECTS)
    ids = [row[0] for row in query(db, "INSERT INTO tasks (task, format, arguments) SELECT "
                                       "'effect', 2, '{\"args\": []}' FROM generate_series(1, 3) "
                                       "RETURNING id")]
    claimed = store.claim(Direct(db), holder="h1", limit=3, lease=60,
                          served=store.Served(None, ["effect"], {}, []))
    held = {row.task.id: row.task for row in claimed.rows}
    assert sorted(held) == ids
    pool = TransactionPool(load({"DATABASE_URL": db_url}), 1)

    def run(task_id: int) -> tuple[Bound, Outcome]:
        bound = Bound(pool)
        with bound.connection().cursor() as cur:
            cur.execute("INSERT INTO effects (task_id, pid) VALUES (%s, 0)", (task_id,))
        return bound, Outcome(held[task_id], 1, DONE, result='"ok"')

    def not_called(outcome: Outcome, why: str) -> Outcome:
        raise AssertionError(why)

    done, taken, lost = ids
    bound, outcome = run(done)
    assert bound.commit(outcome, "h1", False, not_called)[1] == {held[done].hold: "now"}
    bound, outcome = run(taken)
    query(db, "UPDATE tasks SET fence = fence + 1, locked_by = 'h2' WHERE id = %s", (taken,))
    assert bound.commit(outcome, "h1", False, not_called) == (outcome, {})
    bound, outcome = run(lost)
    pid = bound.connection().get_backend_pid()
    query(db, "SELECT pg_terminate_backend(%s)", (pid,))
    back, written = bound.commit(outcome, "h1", False, not_called)
    assert (back.kind, written) == (GIVE_BACK, None)
    assert effects_per_task(db) == Counter({done: 1})
    assert query(db, "SELECT id, status, locked_by, return_value FROM tasks ORDER BY id") == [
        (done, "done", None, "ok"), (taken, "in_progress", "h2", None),
        (lost, "in_progress", "h1", None)]
    pool.close()


def test_eager_mode_runs_the_bound_transaction_in_a_savepoint_of_the_tests_connection(
        db_url: str, db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """taskworker.testing.eager(connection=conn): a task's writes through
    taskworker.transaction() stay on the test's connection (its transaction),
    kept when the task ends done, undone when it fails."""
    import importlib.util

    import taskworker
    from taskworker import registry

    monkeypatch.setattr(registry, "_registry", registry.registered())
    marks, _ = setup(db, tmp_path, hold=False)
    spec = importlib.util.spec_from_file_location("app", tmp_path / "cwd" / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    conn = psycopg2.connect(db_url)
    try:
        with taskworker.testing.eager(connection=conn):
            kept = app.effect.enqueue(None, str(marks))
            undone = app.effect.enqueue(None, str(marks), fail=True)
            assert taskworker.result(None, kept) == "written"
            with pytest.raises(taskworker.TaskFailed, match="after the write"):
                taskworker.result(None, undone)
        with conn.cursor() as cur:
            cur.execute("SELECT task_id FROM effects")
            assert cur.fetchall() == [(kept,)]  # (in the test's open transaction)
        conn.rollback()
        with taskworker.testing.eager():  # no connection: the task fails, saying why
            failed = app.effect.enqueue(None, str(marks))
            with pytest.raises(taskworker.TaskFailed, match="eager mode needs a connection"):
                taskworker.result(None, failed)
    finally:
        conn.close()
