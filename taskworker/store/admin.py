"""One typed function per statement: the enqueue API's and the admin commands'.

Like `store.tasks`, each takes a `Database` and returns Python values. This
module imports no gevent: the enqueue API uses it from plain blocking programs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg2.errors

from . import sql
from .database import Database, Direct, Steps

STATUSES = ("pending", "in_progress", "done", "error", "cancelled", "waiting")
CLAIMED, RUNNING = "claimed", "running"  # a task in progress, before and after its start
UNIQUE_KEY_INDEX = "tasks_unique_key_idx"  # migration 007: one live task per unique_key
RETRY_CONFLICTS = 10  # times retry runs again after losing a unique key to a concurrent writer


class Placement(NamedTuple):
    """Where and when enqueued tasks go: the columns every task of a call shares."""

    task: str | None = None  # None: the default handler
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None  # due at; or
    delay: timedelta | None = None  # due after this, from the database's now(); or now
    trace: str | None = None  # the enqueue's trace context as JSON (tracing.py); None: untraced
    concurrency_key: str | None = None  # a call's key (max_running_per_key; migration 017)


def enqueue(payloads: Sequence[str], placement: Placement,
            arguments: Sequence[str] | None = None) -> Steps[list[int]]:
    """Insert one pending task per payload, placed as `placement` says; return
    their ids in the payloads' order. With `arguments` (JSON calls, see
    codec.py) instead, one task per call, and `payloads` is empty. (This and the
    two below are steps, not functions of a `Database`: the enqueue API runs them
    on a caller's connection, sync or async; see database.Steps.)"""
    if len(payloads if arguments is None else arguments) == 1:
        # One task (every `enqueue`): a VALUES, which the server plans in 60% of
        # the unnest's time; with nothing but the columns most calls give, the
        # shortest (enqueue_now), else enqueue_unique's with no key (it never
        # conflicts).
        one = {"payload": payloads[0] if arguments is None else None,
               "arguments": None if arguments is None else arguments[0]}
        if placement.run_at is None and placement.delay is None \
                and placement.trace is None and placement.concurrency_key is None:
            statement, params = sql.enqueue_now, {
                **one, "task": placement.task, "queue": placement.queue,
                "priority": placement.priority}
        else:
            statement, params = sql.enqueue_unique, {
                **one, "unique_key": None, **placement._asdict()}
        rows = yield statement, params
        return [rows[0][0]]
    rows = yield sql.enqueue, {"payloads": list(payloads) if arguments is None else None,
                               "arguments": None if arguments is None else list(arguments),
                               **placement._asdict()}
    # Rows are inserted in payload order (ORDER BY ordinality), so their identity
    # values increase in that order: the array, sorted, is in the payloads' order.
    return list(rows[0][0] or ())


def enqueue_unique(payload: str | None, unique_key: str, placement: Placement,
                   arguments: str | None = None) -> Steps[int | None]:
    """Insert one task with `unique_key` and return its id; None (nothing
    inserted, no row locked) when a live task holds the key. `arguments`: a
    JSON call, beside a None payload."""
    rows = yield sql.enqueue_unique, {"payload": payload, "arguments": arguments,
                                      "unique_key": unique_key, **placement._asdict()}
    return rows[0][0] if rows else None


def unique_holder(unique_key: str) -> Steps[tuple[int, str] | None]:
    """(id, status) of the live task holding `unique_key`; None if there is none."""
    rows = yield sql.unique_holder, {"unique_key": unique_key}
    return (rows[0][0], rows[0][1]) if rows else None


def seed(db: Database, count: int) -> None:
    """Insert `count` sample tasks "Test task 1" ... "Test task N"."""
    db.query(sql.seed, {"count": count})


class Summary(NamedTuple):
    counts: dict[str, int]  # tasks by status, every status present
    scheduled: int  # pending, not due yet
    claimed: int  # in progress, not started (started_at NULL: waiting in its process)
    oldest_due_seconds: float | None  # how long the oldest due pending task has waited
    rescued_last_hour: int
    retrying: int  # pending after a failed or lost attempt


class Holder(NamedTuple):
    locked_by: str | None
    claimed: int  # held, not started (waiting in the process's local queue)
    running: int  # held, started (started_at set)
    lease_left_seconds: float | None  # negative: expired

    @property
    def tasks(self) -> int:
        """Every task it holds, started or not."""
        return self.claimed + self.running


class ErrorCount(NamedTuple):
    """A kind of error: errors alike but for numbers, ids and quoted values."""

    error: str | None  # one example of the kind
    tasks: int
    messages: int  # distinct messages of the kind


class TaskState(NamedTuple):
    status: str | None  # None: there is no such task
    locked_by: str | None
    started: bool = False  # started_at is set (in progress: running, else claimed)


def state(status: str, started: bool) -> str:
    """A status as status, the dashboard and the periodic skip line name it: a
    task in progress is CLAIMED (by a process, waiting in its local queue) until
    its handler starts, RUNNING once it has (`started`: started_at is set, see
    migration 011); any other status is itself."""
    if status != "in_progress":
        return status
    return RUNNING if started else CLAIMED


def summary(db: Database) -> Summary:
    (*counts, scheduled, claimed, oldest, rescued, retrying) = db.query(sql.status_summary)[0]
    return Summary(dict(zip(STATUSES, counts, strict=True)), scheduled, claimed,
                   None if oldest is None else float(oldest), rescued, retrying)


class RateState(NamedTuple):
    task: str
    starts: int  # allowed per window
    per: float  # the window, in seconds
    spent: int  # starts within about the last window
    waiting: int  # pending tasks that are due


def rate_limits(db: Database) -> list[RateState]:
    """Each rate-limited task name, as the processes serving it last set it."""
    return [RateState(task, starts, float(per), spent, waiting)
            for task, starts, per, spent, waiting in db.query(sql.status_rate_limits)]


def holders(db: Database) -> list[Holder]:
    """Tasks in progress per process (claimed and running), with the time left
    on its soonest lease."""
    return [Holder(who, claimed, running, None if left is None else float(left))
            for who, claimed, running, left in db.query(sql.status_holders)]


def top_errors(db: Database, limit: int) -> list[ErrorCount]:
    return [ErrorCount(*row) for row in db.query(sql.status_errors, {"limit": limit})]


def task(db: Direct, task_id: int) -> dict[str, Any] | None:
    """Every column of one task, in the table's order; None when there is none."""
    rows = db.query_named(sql.task_get, {"id": task_id})
    return rows[0] if rows else None


def states(db: Database, ids: Sequence[int]) -> dict[int, TaskState]:
    """Status and holder of each of `ids` (TaskState(None, None): no such task)."""
    found = {i: TaskState(status, holder, started) for i, status, holder, started
             in db.query(sql.task_states, {"ids": list(ids)})}
    return {i: found.get(i, TaskState(None, None)) for i in ids}


class Blocked(NamedTuple):
    """A task in error that retry leaves alone: a live task holds its unique_key."""

    id: int
    unique_key: str
    holder_id: int
    holder_status: str
    holder_started: bool  # the holder's handler started (started_at set)

    @property
    def reason(self) -> str:
        """Why retry left it in error, in words."""
        return (f"its unique key {self.unique_key!r} is held by task {self.holder_id} "
                f"({state(self.holder_status, self.holder_started)})")


def retry(db: Database, *, ids: Sequence[int] | None, since: datetime | None,
          before: datetime, limit: int) -> list[int]:
    """Put up to `limit` tasks in error back to pending, as if new; their ids.

    A task whose unique_key a live task holds stays in error (see `blocked`).
    When a concurrent enqueue or retry takes such a key between the statement's
    check and its update, the statement fails on the unique index and is run
    again, which then sees the key taken: `db` must be in autocommit mode.
    """
    params = {"ids": None if ids is None else list(ids), "since": since, "before": before,
              "limit": limit}
    for _ in range(RETRY_CONFLICTS):
        try:
            return [row[0] for row in db.query(sql.retry, params)]
        except psycopg2.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != UNIQUE_KEY_INDEX:
                raise
    return [row[0] for row in db.query(sql.retry, params)]


def blocked(db: Database, *, ids: Sequence[int] | None, since: datetime | None,
            before: datetime) -> list[Blocked]:
    """The tasks in error of retry's selection whose unique_key is held by a live task."""
    return [Blocked(*row) for row in db.query(sql.retry_blocked, {
        "ids": None if ids is None else list(ids), "since": since, "before": before})]


class Cancelled(NamedTuple):
    cancelled: list[int]  # were pending: now cancelled
    requested: list[int]  # are running: their holder was asked to stop them


def cancel(db: Database, ids: Sequence[int], source: str = "taskworker cancel") -> Cancelled:
    """Cancel the pending tasks among `ids`, and ask the holders of the running
    ones to stop them; `source` says who asks (it is in the stored error)."""
    rows = db.query(sql.cancel, {"ids": list(ids), "source": source})
    return Cancelled(sorted(i for i, running in rows if not running),
                     sorted(i for i, running in rows if running))


class Backlog(NamedTuple):
    """Pending and in-progress tasks of one task name in one queue."""

    queue: str
    task: str | None  # None: tasks without a name (the default handler's)
    pending: int  # due now
    scheduled: int  # pending, due later
    claimed: int  # in progress, not started: waiting in its process's local queue
    running: int  # in progress, started (started_at set)
    oldest_pending_seconds: float | None  # how long the oldest due one has waited


def backlog(db: Database) -> list[Backlog]:
    """Pending and in-progress tasks by (queue, task name); reads no finished row."""
    return [Backlog(queue, task, due, later, claimed, running,
                    None if oldest is None else float(oldest))
            for queue, task, due, later, claimed, running, oldest
            in db.query(sql.status_backlog)]


class Outcome(NamedTuple):
    """What a task's row says of its outcome (`taskworker.result`)."""

    id: int
    status: str
    format: int  # 1: `result` is the text result; 2: `value` is the JSON return value
    result: str | None
    value: str | None  # the return value as JSON text
    error: str | None
    traceback: str | None


def task_outcomes(ids: Sequence[int]) -> Steps[dict[int, Outcome]]:
    """The outcome columns of the tasks `ids` (a pruned or unknown id is absent).
    (This and the next are steps: `result` and `wait` read through any
    connection the enqueue API takes, sync or async.)"""
    rows = yield sql.task_outcomes, {"ids": list(ids)}
    return {row[0]: Outcome(*row) for row in rows}


def await_tasks(ids: Sequence[int]) -> Steps[list[int]]:
    """Mark the unfinished tasks of `ids` as awaited: each notifies channel
    taskworker_finished when it finishes (listen_finished receives it). Returns
    the ids of those it skipped, locked by another transaction: mark each with
    await_task once this transaction has committed."""
    rows = yield sql.await_tasks, {"ids": list(ids)}
    return [row[0] for row in rows]


def await_task(task_id: int) -> Steps[None]:
    """Mark one task that await_tasks skipped (in a transaction of its own)."""
    yield sql.await_task, {"id": task_id}


def listen_finished(db: Database, listen: bool = True) -> None:
    """Subscribe this connection to the notifications of awaited tasks (or stop)."""
    db.query(sql.listen_finished if listen else sql.unlisten_finished)


def workflow_ids(count: int) -> Steps[tuple[int, list[int]]]:
    """A new workflow id and `count` task ids, increasing. (This and the next
    are steps, as `enqueue` is: a workflow is enqueued on any caller's connection.)"""
    rows = yield sql.workflow_ids, {"count": count}
    workflow_id, ids = rows[0]
    return workflow_id, list(ids)


def enqueue_workflow(workflow_id: int, rows: Sequence[dict[str, Any]],
                     trace: str | None) -> Steps[None]:
    """Insert tasks of a workflow (rows from workflows.rows), waiting or pending,
    each with the enqueue's trace context `trace` (tracing.py; None: untraced)."""
    def column(key: str) -> list[Any]:
        return [r[key] for r in rows]

    yield sql.enqueue_workflow, {
        "workflow_id": workflow_id, "ids": column("id"), "tasks": column("task"),
        "queues": column("queue"), "priorities": column("priority"),
        "arguments": column("arguments"), "parents": column("parents"),
        "next_ids": column("next_ids"),
        "next_joins": column("next_joins"), "delays": column("delay"),
        "run_ats": column("run_at"), "trace": trace}


class Related(NamedTuple):
    """A task next to another in its workflow: id, task name, status."""

    id: int
    task: str | None
    status: str


class Place(NamedTuple):
    """Where a task stands in its workflow (`taskworker show`, the dashboard)."""

    workflow_id: int
    children: list[Related]  # the tasks its result goes to
    parents: list[Related]  # the tasks it waits for or got its input from (the first ones)
    parent_counts: dict[str, int]  # all of them, by status
    waiting_for: int | None  # how many it still waits for (None: not waiting)


def workflow_place(db: Database, task_id: int, limit: int = 20) -> Place | None:
    """Where task `task_id` stands in its workflow; None when it is in none."""
    rows = db.query(sql.workflow_of, {"id": task_id, "limit": limit})
    if not rows:
        return None
    workflow_id, children, parents, counts, left = rows[0]
    return Place(workflow_id, [Related(*c) for c in json.loads(children)],
                 [Related(*p) for p in json.loads(parents)], json.loads(counts), left)


class WorkflowState(NamedTuple):
    """A workflow at a glance: its tasks by status, first and last id."""

    counts: dict[str, int]
    first_id: int | None
    last_id: int | None
    changed_at: datetime | None

    @property
    def state(self) -> str:
        """running (tasks pending, waiting or in progress), done (every task
        done), failed (ended with a task in error), cancelled, or unknown."""
        c = self.counts
        if not c:
            return "unknown"
        if any(c.get(s) for s in ("pending", "waiting", "in_progress")):
            return "running"
        if c.get("error"):
            return "failed"
        if c.get("cancelled"):
            return "cancelled"
        return "done"


def workflow_state(db: Database, workflow_id: int) -> WorkflowState:
    rows = db.query(sql.workflow_state, {"workflow_id": workflow_id})
    return WorkflowState({r[0]: r[1] for r in rows}, min((r[2] for r in rows), default=None),
                         max((r[3] for r in rows), default=None),
                         max((r[4] for r in rows), default=None))


def cancel_workflow(db: Database, workflow_id: int,
                    source: str = "taskworker cancel") -> Cancelled:
    """Cancel what has not started of a workflow; ask its running tasks to stop
    (`source` says who asks: it is in the stored error)."""
    rows = db.query(sql.cancel_workflow, {"workflow_id": workflow_id, "source": source})
    return Cancelled(sorted(i for i, running in rows if not running),
                     sorted(i for i, running in rows if running))
