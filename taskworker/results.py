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
import time
from collections.abc import Sequence
from typing import Any

from .store import admin
from .store.database import Steps

FINISHED = ("done", "error", "cancelled")


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
    found = drivers.run(conn_or_cursor, admin.task_outcomes([task_id]))
    return value_of(task_id, found.get(task_id))


async def result_async(conn: Any, task_id: int) -> Any:
    """`result` through an asynchronous connection (any that `enqueue_async`
    takes: psycopg 3's, SQLAlchemy's, asyncpg's)."""
    from . import drivers, testing

    eager = testing.active()
    if eager is not None:
        return eager.result(task_id)
    found = await drivers.run_async(conn, admin.task_outcomes([task_id]))
    return value_of(task_id, found.get(task_id))


def wait(conn: Any, task_ids: int | Sequence[int], timeout: float | None = None, *,
         poll: float | None = None) -> Any:
    """Wait until the task (or every task of a list) has finished; return its
    result (a list of results, in the order given), as `result` does: a task in
    error or cancelled raises TaskFailed.

    `conn` is a psycopg2 or psycopg 3 connection (or a cursor of one) with no
    transaction open, given up for the wait: it LISTENs on it, commits the
    statements it sends, and leaves it as it was found. (Another object raises
    TypeError: SQLAlchemy's and Django's manage their own transactions, wait on
    the driver's connection below them; one inside a transaction could never see
    the outcome: RuntimeError.) `timeout` in seconds (None: no limit) raises
    WaitTimeout. `poll`: seconds between reads when notifications cannot arrive
    (PgBouncer in transaction mode); None: woken only by them. Never call it
    inside a running task: the task would hold a worker while the one it waits
    for may need it (RuntimeError)."""
    from .drivers import run, waiters

    single, ids, eager = _waited(task_ids, "wait")
    if eager is not None:
        return _picked(single, [eager.result(i) for i in ids])
    with waiters.waiter(conn) as waiter:
        found = run(waiter, _waiting(ids, timeout, poll), adapt=_itself)
    return _picked(single, [value_of(i, found.get(i)) for i in ids])


async def wait_async(conn: Any, task_ids: int | Sequence[int], timeout: float | None = None,
                     *, poll: float | None = None) -> Any:
    """`wait` on an asynchronous connection: a psycopg 3 AsyncConnection (or
    AsyncCursor) or an asyncpg connection with no transaction open (the same
    rules; an SQLAlchemy AsyncConnection or AsyncSession raises TypeError: wait
    on the driver's connection below it). The event loop runs on while it sleeps."""
    from .drivers import run_async, waiters

    single, ids, eager = _waited(task_ids, "wait_async")
    if eager is not None:
        return _picked(single, [eager.result(i) for i in ids])
    async with waiters.async_waiter(conn) as waiter:
        found = await run_async(waiter, _waiting(ids, timeout, poll), adapt=_itself)
    return _picked(single, [value_of(i, found.get(i)) for i in ids])


def _itself(waiter: Any) -> Any:
    return waiter


def _waited(task_ids: int | Sequence[int], name: str) -> tuple[bool, list[int], Any]:
    """(one id given?, the ids, the eager test mode's runner or None);
    RuntimeError inside a running task."""
    from . import testing
    from .handlers import current_task

    single = isinstance(task_ids, int)
    ids = [task_ids] if isinstance(task_ids, int) else list(task_ids)
    if current_task() is not None:
        raise RuntimeError(f"taskworker.{name}() inside a running task could deadlock the "
                           "workers (the task waited for may need this worker): enqueue "
                           "a follow-up task instead")
    return single, ids, testing.active()


def _picked(single: bool, values: list[Any]) -> Any:
    """The one value when one id was given, else the list."""
    return values[0] if single else values


def _waiting(ids: list[int], timeout: float | None,
             poll: float | None) -> Steps[dict[int, admin.Outcome]]:
    """What `wait` and `wait_async` do once they listen, as steps a waiter runs
    (drivers/waiters.py): mark the tasks awaited, then read them each time a
    notification for one of them arrives (or every `poll` seconds), until all
    finished. COMMIT ends what the statements opened, so that the next read sees
    what committed since."""
    from .drivers.waiters import COMMIT, SLEEP

    deadline = None if timeout is None else time.monotonic() + timeout
    locked = yield from admin.await_tasks(ids)
    yield COMMIT, {}
    for task_id in locked:  # (each in a transaction of its own: see await_tasks)
        yield from admin.await_task(task_id)
        yield COMMIT, {}
    found = yield from admin.task_outcomes(ids)
    yield COMMIT, {}
    waiting = {i for i in ids if i in found and found[i].status not in FINISHED}
    while waiting:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise WaitTimeout(sorted(waiting), timeout or 0.0)
        sleep = left if poll is None else poll if left is None else min(poll, left)
        came = {row[0] for row in (yield SLEEP, {"seconds": sleep})}
        if came & waiting or poll is not None:
            again = yield from admin.task_outcomes(sorted(waiting))
            yield COMMIT, {}
            found.update(again)
            waiting = {i for i in waiting if i in again and again[i].status not in FINISHED}
    return found


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
