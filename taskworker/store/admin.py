"""One typed function per statement: the enqueue API's and the admin commands'.

Like `store.tasks`, each takes a `Database` and returns Python values. This
module imports no gevent: the enqueue API uses it from plain blocking programs.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from . import sql
from .database import Database, Direct

STATUSES = ("pending", "in_progress", "done", "error", "cancelled")


def enqueue(db: Database, payloads: Sequence[str], *, run_at: datetime | None = None,
            delay: timedelta | None = None) -> list[int]:
    """Insert one pending task per payload, due at `run_at`, or after `delay`, or
    now; return their ids in the payloads' order."""
    rows = db.query(sql.enqueue, {"payloads": list(payloads), "run_at": run_at,
                                  "delay": delay})
    # Rows are inserted in payload order (ORDER BY ordinality), so their identity
    # values increase in that order whatever RETURNING's order is.
    return sorted(row[0] for row in rows)


def seed(db: Database, count: int) -> None:
    """Insert `count` sample tasks "Test task 1" ... "Test task N"."""
    db.query(sql.seed, {"count": count})


class Summary(NamedTuple):
    counts: dict[str, int]  # tasks by status, every status present
    scheduled: int  # pending, not due yet
    oldest_due_seconds: float | None  # how long the oldest due pending task has waited
    rescued_last_hour: int
    retrying: int  # pending after a failed or lost attempt


class Holder(NamedTuple):
    locked_by: str | None
    tasks: int
    lease_left_seconds: float | None  # negative: expired


class ErrorCount(NamedTuple):
    error: str | None
    tasks: int


class TaskState(NamedTuple):
    status: str | None  # None: there is no such task
    locked_by: str | None


def summary(db: Database) -> Summary:
    (*counts, scheduled, oldest, rescued, retrying) = db.query(sql.status_summary)[0]
    return Summary(dict(zip(STATUSES, counts, strict=True)), scheduled,
                   None if oldest is None else float(oldest), rescued, retrying)


def holders(db: Database) -> list[Holder]:
    """Running tasks per process, with the time left on its soonest lease."""
    return [Holder(who, n, None if left is None else float(left))
            for who, n, left in db.query(sql.status_holders)]


def top_errors(db: Database, limit: int) -> list[ErrorCount]:
    return [ErrorCount(*row) for row in db.query(sql.status_errors, {"limit": limit})]


def task(db: Direct, task_id: int) -> dict[str, Any] | None:
    """Every column of one task, in the table's order; None when there is none."""
    rows = db.query_named(sql.task_get, {"id": task_id})
    return rows[0] if rows else None


def states(db: Database, ids: Sequence[int]) -> dict[int, TaskState]:
    """Status and holder of each of `ids` (TaskState(None, None): no such task)."""
    found = {i: TaskState(status, holder)
             for i, status, holder in db.query(sql.task_states, {"ids": list(ids)})}
    return {i: found.get(i, TaskState(None, None)) for i in ids}


def retry(db: Database, *, ids: Sequence[int] | None, since: datetime | None,
          before: datetime, limit: int) -> list[int]:
    """Put up to `limit` tasks in error back to pending, as if new; their ids."""
    rows = db.query(sql.retry, {"ids": None if ids is None else list(ids), "since": since,
                                "before": before, "limit": limit})
    return [row[0] for row in rows]


def cancel(db: Database, ids: Sequence[int]) -> list[int]:
    """Cancel the pending tasks among `ids`; the ids cancelled."""
    return [row[0] for row in db.query(sql.cancel, {"ids": list(ids)})]


class Backlog(NamedTuple):
    """Pending and running tasks of one task name in one queue."""

    queue: str
    task: str | None  # None: tasks without a name (the default handler's)
    pending: int  # due now
    scheduled: int  # pending, due later
    running: int
    oldest_pending_seconds: float | None  # how long the oldest due one has waited


def backlog(db: Database) -> list[Backlog]:
    """Pending and running tasks by (queue, task name); reads no finished row."""
    return [Backlog(queue, task, due, later, running, None if oldest is None else float(oldest))
            for queue, task, due, later, running, oldest in db.query(sql.status_backlog)]
