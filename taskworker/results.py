"""What an application reads back: a task's result, and waiting for it.

    task_id = send_email.enqueue(conn, "ann@example.com", subject="Hi")
    conn.commit()
    receipt = taskworker.wait(conn, task_id, timeout=30)   # its return value
    taskworker.result(conn, task_id)                         # the same, read again

The task row is the only place a result lives: `result` reads it, `wait`
sleeps until the rows it waits for finish. A waiter marks its rows `awaited`,
and only such rows notify when they finish (migration 012's trigger), so the
tasks nobody waits for cost nothing more. `wait` does not poll while LISTEN
works: it sleeps on its connection's socket until a notification for one of its
tasks comes, whichever process (or restart of serve) writes the outcome.

This module imports neither gevent nor anything that patches: a plain blocking
program, a threaded one, or one under gevent can wait alike.
"""
from __future__ import annotations

import json
import select
import time
from collections.abc import Sequence
from typing import Any

from .store import admin
from .store.database import Direct

FINISHED = ("done", "error", "cancelled")
_IDLE, _FAILED = 0, 3  # psycopg2.extensions.TRANSACTION_STATUS_IDLE and _INERROR


class TaskFailed(Exception):
    """The task ended in error or was cancelled: `status`, `error` (the stored
    message) and `traceback` (the stored traceback, or None) say how."""

    def __init__(self, task_id: int, status: str, error: str | None,
                 traceback: str | None) -> None:
        super().__init__(f"task {task_id} {'failed' if status == 'error' else status}: "
                         f"{error or 'no error was stored'}")
        self.task_id = task_id
        self.status = status
        self.error = error
        self.traceback = traceback


class NotFinished(Exception):
    """The task is pending or running: it has no result yet."""


class UnknownTask(LookupError):
    """No task has this id (never enqueued, or pruned since it finished)."""


class WaitTimeout(TimeoutError):
    """`wait` timed out; `task_ids` are the tasks still unfinished."""

    def __init__(self, task_ids: list[int], timeout: float) -> None:
        shown = ", ".join(map(str, task_ids[:10])) + (" ..." if len(task_ids) > 10 else "")
        super().__init__(f"waited {timeout:g}s: task{'s' if len(task_ids) > 1 else ''} "
                         f"{shown} not finished")
        self.task_ids = task_ids


def result(conn_or_cursor: Any, task_id: int) -> Any:
    """The result of a finished task: its return value (a task called with
    arguments: the JSON value it returned; a text payload task: its text).
    Raises TaskFailed for a task in error or cancelled, NotFinished for one
    pending or running, UnknownTask for an id with no row. `conn_or_cursor`:
    any connection the synchronous enqueue takes (see drivers/); the read joins
    its transaction."""
    from . import drivers, testing

    eager = testing.active()
    if eager is not None:
        return eager.result(task_id)
    found = admin.task_outcomes(drivers.database(conn_or_cursor), [task_id])
    return value_of(task_id, found.get(task_id))


def wait(conn: Any, task_ids: int | Sequence[int], timeout: float | None = None, *,
         poll: float | None = None) -> Any:
    """Wait until the task (or every task of a list) has finished; return its
    result (a list of results, in the order given), as `result` does: a task in
    error or cancelled raises TaskFailed.

    `conn` is a psycopg2 connection with no transaction open (only psycopg2's:
    it sleeps on the socket and reads psycopg2's notifications; another
    library's raises TypeError. One inside a transaction could never see the
    outcome: RuntimeError); it is used for LISTEN and left as it was found.
    `timeout` in seconds (None: no limit) raises WaitTimeout. `poll`: seconds
    between reads when notifications cannot arrive (PgBouncer in transaction
    mode); None: woken only by them. Never call it inside a running task: the
    task would hold a worker while the one it waits for may need it
    (RuntimeError)."""
    from . import testing
    from .handlers import current_task

    single = isinstance(task_ids, int)
    ids = [task_ids] if isinstance(task_ids, int) else list(task_ids)
    if current_task() is not None:
        raise RuntimeError("taskworker.wait() inside a running task could deadlock the "
                           "workers (the task waited for may need this worker): enqueue "
                           "a follow-up task instead")
    eager = testing.active()
    if eager is not None:
        values = [eager.result(i) for i in ids]
        return values[0] if single else values
    conn = getattr(conn, "connection", conn)  # (a cursor: its connection)
    _check_idle(conn)
    found = _wait(conn, ids, timeout, poll)
    values = [value_of(i, found.get(i)) for i in ids]
    return values[0] if single else values


def value_of(task_id: int, row: admin.Outcome | None) -> Any:
    """A task's result as `result` returns it, or the exception it raises."""
    if row is None:
        raise UnknownTask(f"no task has id {task_id} (never enqueued, or pruned)")
    if row.status == "done":
        if row.format == 1:
            return row.result
        return None if row.value is None else json.loads(row.value)
    if row.status in ("error", "cancelled"):
        raise TaskFailed(task_id, row.status, row.error, row.traceback)
    raise NotFinished(f"task {task_id} is not finished ({row.status})")


def exception_type(error: str, traceback: str | None) -> str:
    """The class of the exception a stored failure describes: from its
    traceback's last line, which names it with its module (`myapp.tasks.Refused:
    ...`; a builtin's without one), else the `Type` of its `Type: message`."""
    kind = error.partition(": ")[0]
    if traceback:
        qualified = traceback.rstrip("\n").rsplit("\n", 1)[-1].partition(":")[0].strip()
        if qualified.endswith(kind) and " " not in qualified:
            return qualified
    return kind


def _check_idle(conn: Any) -> None:
    status = getattr(conn, "get_transaction_status", None)
    if status is None:
        raise TypeError(f"wait() needs a psycopg2 connection, not {type(conn).__name__}")
    if status() != _IDLE:
        raise RuntimeError("wait() needs a connection with no transaction open: inside "
                           "one it could never see the outcome; commit or roll back first")


def _wait(conn: Any, ids: list[int], timeout: float | None,
          poll: float | None) -> dict[int, admin.Outcome]:
    """Listen, mark the tasks awaited, then read them each time a notification
    for one of them arrives (or every `poll` seconds), until all finished."""
    db = Direct(conn)
    deadline = None if timeout is None else time.monotonic() + timeout
    admin.listen_finished(db)
    _commit(conn)  # listening before the marks: no finish can fall between
    try:
        admin.await_tasks(db, ids)
        _commit(conn)
        found = admin.task_outcomes(db, ids)
        _commit(conn)
        waiting = {i for i in ids if i in found and found[i].status not in FINISHED}
        while waiting:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(sorted(waiting), timeout or 0.0)
            sleep = left if poll is None else poll if left is None else min(poll, left)
            select.select([conn], [], [], sleep)
            conn.poll()
            came = {int(n.payload) for n in conn.notifies
                    if n.channel == "taskworker_finished" and n.payload.isdigit()}
            conn.notifies.clear()
            if came & waiting or poll is not None:
                again = admin.task_outcomes(db, sorted(waiting))
                _commit(conn)
                found.update(again)
                waiting = {i for i in waiting if i in again and again[i].status not in FINISHED}
        return found
    finally:
        if not conn.closed:
            try:
                if conn.get_transaction_status() == _FAILED:  # (failed midway: end it)
                    conn.rollback()
                admin.listen_finished(db, listen=False)
                _commit(conn)
                conn.notifies.clear()
            except Exception:  # the connection broke: the error that did it is raised
                pass


def _commit(conn: Any) -> None:
    """End the transaction our statements opened: one is open after them even
    in autocommit mode inside `with conn:` (psycopg2 2.9 opens one there)."""
    if conn.get_transaction_status() != _IDLE:
        conn.commit()
