"""Unique tasks: while a task with a unique_key is pending (waiting for a retry
included) or running, enqueueing another with that key inserts nothing and returns
the live task's id; the key is freed when the task finishes.

The enqueuers are plain blocking psycopg2 connections in this process, as an
application's would be (threads, each with its own connection); `retry` runs as
the CLI does, in a subprocess.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from invariants import add_task, query, wait_until
from proc import CLI, child_env, cli

from taskworker import client

ENQUEUERS = 20


@pytest.fixture
def app_conn(db_url: str) -> Iterator[Any]:
    """The application's own connection: not autocommit, as psycopg2 opens it."""
    conn = psycopg2.connect(db_url, connect_timeout=10)
    yield conn
    conn.close()


def keyed(db: Any, key: str) -> list[tuple[Any, ...]]:
    return query(db, "SELECT id, status FROM tasks WHERE unique_key = %s ORDER BY id", (key,))


def waiting_on_a_lock(db: Any, application_name: str | None = None) -> int:
    """How many sessions (of `application_name`, when given) wait for a lock."""
    return query(db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND datname = current_database() "
                     "AND (%s::text IS NULL OR application_name = %s)",
                 (application_name, application_name))[0][0]


def test_twenty_concurrent_enqueuers_insert_one_task(db_url: str, db: Any) -> None:
    conns = [psycopg2.connect(db_url, connect_timeout=10) for _ in range(ENQUEUERS)]
    start = threading.Barrier(ENQUEUERS)
    results: list[client.Enqueued] = []
    errors: list[BaseException] = []

    def enqueuer(conn: Any, n: int) -> None:
        try:
            start.wait(timeout=30)
            done = client.enqueue_unique(conn, f"from enqueuer {n}", "invoice-42",
                                         task="invoice", queue="billing",
                                         force=True)  # (registered by no module here)
            if done.inserted:
                # Commit late: the others' inserts meet a row not committed yet, and
                # must wait for it rather than insert beside it. Commit once they all do.
                wait_until(lambda: waiting_on_a_lock(db) == ENQUEUERS - 1, 30,
                           lambda: f"the {ENQUEUERS - 1} other enqueuers to wait for the row "
                                   f"not committed yet (now {waiting_on_a_lock(db)})")
            conn.commit()
            results.append(done)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=enqueuer, args=(c, n)) for n, c in enumerate(conns)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in conns:
            c.close()
    assert errors == []
    assert len(results) == ENQUEUERS
    rows = query(db, "SELECT id, task, queue, status FROM tasks")
    assert len(rows) == 1
    (task_id, task, queue, status) = rows[0]
    assert (task, queue, status) == ("invoice", "billing", "pending")
    assert {r.id for r in results} == {task_id}
    assert sorted(r.inserted for r in results) == [False] * (ENQUEUERS - 1) + [True]


def test_live_task_holds_the_key_finished_frees_it(app_conn: Any, db: Any) -> None:
    first = client.enqueue(app_conn, "a", unique_key="k")
    app_conn.commit()
    # Pending and due, running, and pending after a failed attempt (waiting for its
    # retry): each holds the key; enqueue returns its id and inserts nothing.
    for live in ("status = 'pending'",
                 "status = 'in_progress', attempts = 1, locked_by = 'h:1:x', "
                 "locked_until = now() + interval '1 minute'",
                 "status = 'pending', attempts = 2, locked_by = NULL, locked_until = NULL, "
                 "run_at = now() + interval '1 hour', error = 'boom'"):
        query(db, f"UPDATE tasks SET {live} WHERE id = %s", (first,))
        again = client.enqueue_unique(app_conn, "b", "k")
        app_conn.commit()
        status = query(db, "SELECT status FROM tasks WHERE id = %s", (first,))[0][0]
        assert again == client.Enqueued(first, False, status)
        assert keyed(db, "k") == [(first, status)]
    # A finished task (done, error or cancelled) frees its key: the next enqueue
    # inserts a new task, which holds the key in turn.
    holder = first
    for finished in ("done", "error", "cancelled"):
        query(db, "UPDATE tasks SET status = %s, locked_by = NULL, locked_until = NULL "
                  "WHERE id = %s", (finished, holder))
        new = client.enqueue(app_conn, "c", unique_key="k")
        app_conn.commit()
        assert new > holder
        assert keyed(db, "k")[-1] == (new, "pending")
        holder = new
    assert [s for _, s in keyed(db, "k")] == ["done", "error", "cancelled", "pending"]
    # Other keys, and tasks without a key, are not affected.
    other = client.enqueue(app_conn, "d", unique_key="other")
    plain = client.enqueue_many(app_conn, ["e", "f"])
    app_conn.commit()
    assert len({holder, other, *plain}) == 4


def test_own_transaction_and_rollback(app_conn: Any, db: Any) -> None:
    # A key this transaction inserted is held for it too (its own row is visible).
    first = client.enqueue_unique(app_conn, "a", "order-7")
    second = client.enqueue_unique(app_conn, "b", "order-7")
    assert first.inserted and second == client.Enqueued(first.id, False, "pending")
    assert keyed(db, "order-7") == []  # nobody else sees it before the commit
    app_conn.rollback()
    assert keyed(db, "order-7") == []
    third = client.enqueue_unique(app_conn, "c", "order-7")
    app_conn.commit()
    assert third.inserted and keyed(db, "order-7") == [(third.id, "pending")]


def test_waits_for_an_uncommitted_holder(db_url: str, app_conn: Any, db: Any) -> None:
    """An enqueue meeting a key inserted by a transaction not committed yet waits
    for it: after its rollback it inserts, after its commit it returns its id."""
    for outcome in ("rollback", "commit"):
        query(db, "DELETE FROM tasks")
        mine = client.enqueue_unique(app_conn, "mine", "k")
        other_conn = psycopg2.connect(db_url, application_name="other enqueuer")
        got: list[client.Enqueued] = []
        thread = threading.Thread(target=lambda c=other_conn, got=got: (
            got.append(client.enqueue_unique(c, "theirs", "k")), c.commit()))
        try:
            thread.start()
            wait_until(lambda: waiting_on_a_lock(db, "other enqueuer") == 1, 10,
                       "the other enqueuer to wait for the uncommitted row")
            assert got == []
            getattr(app_conn, outcome)()
            thread.join(timeout=10)
        finally:
            other_conn.close()
        (theirs,) = got
        if outcome == "rollback":
            assert theirs.inserted and keyed(db, "k") == [(theirs.id, "pending")]
        else:
            assert theirs == client.Enqueued(mine.id, False, "pending")
            assert query(db, "SELECT payload FROM tasks") == [("mine",)]


def test_unique_key_is_checked(app_conn: Any, db: Any) -> None:
    with pytest.raises(ValueError, match="unique_key must be a non-empty text"):
        client.enqueue(app_conn, "x", unique_key="")
    with pytest.raises(ValueError, match="unique_key must be a non-empty text"):
        client.enqueue(app_conn, "x", unique_key="a\x00b")
    with pytest.raises(ValueError, match="^unique_key is 1001 bytes, over 1000$"):
        client.enqueue(app_conn, "x", unique_key="k" * 1001)
    with pytest.raises(TypeError, match="unique_key must be str, not int"):
        client.enqueue(app_conn, "x", unique_key=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unique_key"):  # one key per task: enqueue only
        client.enqueue_many(app_conn, ["x"], unique_key="k")  # type: ignore[call-arg]
    app_conn.rollback()
    assert query(db, "SELECT count(*) FROM tasks") == [(0,)]


# --- retry


def test_retry_skips_a_task_whose_key_is_held(db_url: str, db: Any) -> None:
    live = add_task(db, "live", "pending", unique_key="k1")
    held = add_task(db, "held", "error", error="E", unique_key="k1")
    twins = [add_task(db, "twin", "error", error="E", unique_key="k2") for _ in range(2)]
    free = add_task(db, "free", "error", error="E", unique_key="k3")
    plain = add_task(db, "plain", "error", error="E")
    code, out, err = cli(db_url, "retry", str(held), str(free), str(plain))
    assert (code, out) == (1, "Retried 2 tasks; skipped 1 whose unique key a live task holds\n")
    assert err == (f"Error: task {held} skipped: its unique key 'k1' is held by task {live} "
                   "(pending)\n")
    # Of two tasks in error with the same free key, the lowest id is retried.
    code, out, err = cli(db_url, "retry", "--all-errors")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "Retried 1 task; skipped 2 whose unique key a live task holds",
        f"Skipped task {held}: its unique key 'k1' is held by task {live} (pending)",
        f"Skipped task {twins[1]}: its unique key 'k2' is held by task {twins[0]} (pending)",
    ]
    assert dict(query(db, "SELECT id, status FROM tasks")) == {
        live: "pending", held: "error", twins[0]: "pending", twins[1]: "error",
        free: "pending", plain: "pending"}
    # A holder in progress is claimed until its handler starts (started_at), then running.
    query(db, "UPDATE tasks SET status = 'in_progress', locked_by = 'h:1:x' WHERE id = %s",
          (live,))
    for started, state in (("NULL", "claimed"), ("now()", "running")):
        query(db, f"UPDATE tasks SET started_at = {started} WHERE id = %s", (live,))
        err = cli(db_url, "retry", str(held))[2]
        assert err == (f"Error: task {held} skipped: its unique key 'k1' is held by task "
                       f"{live} ({state})\n")
    query(db, "UPDATE tasks SET status = 'pending', locked_by = NULL WHERE id = %s", (live,))
    # Once the holder finishes, the key is free to retry.
    query(db, "UPDATE tasks SET status = 'done' WHERE id = %s", (live,))
    assert cli(db_url, "retry", str(held)) == (0, "Retried 1 task\n", "")


def test_retry_racing_for_a_key_skips_instead_of_failing(db_url: str, db: Any) -> None:
    """Another writer takes the key after retry's check: the update meets the
    unique index, waits for that writer, and the command runs again and skips."""
    first = add_task(db, "first", "error", error="E", unique_key="k")
    second = add_task(db, "second", "error", error="E", unique_key="k")
    other = psycopg2.connect(db_url)  # a concurrent `retry` of `first`, not committed yet
    try:
        query(other, "UPDATE tasks SET status = 'pending' WHERE id = %s", (first,))
        proc = subprocess.Popen([*CLI, "retry", str(second)], text=True,
                                env=child_env({"DATABASE_URL": db_url}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: waiting_on_a_lock(db, "taskworker retry") == 1, 20,
                   "retry to wait for the other writer's row")
        other.commit()
        out, err = proc.communicate(timeout=30)
    finally:
        other.close()
    assert (proc.returncode, out) == (
        1, "Retried 0 tasks; skipped 1 whose unique key a live task holds\n")
    assert err == (f"Error: task {second} skipped: its unique key 'k' is held by task {first} "
                   "(pending)\n")
    assert keyed(db, "k") == [(first, "pending"), (second, "error")]
