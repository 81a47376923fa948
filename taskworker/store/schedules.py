"""One typed function per statement on periodic tasks: taking a tick (serve's
scheduler) and reading what `taskworker schedule` shows.

Like `store.tasks`, each takes a `Database` and returns Python values. No gevent
here: the schedule command reads through a plain connection.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from . import sql
from .database import Database


class TickTaken(NamedTuple):
    """What `enqueue_tick` did."""

    taken: bool  # False: another process took this tick, or a newer one is recorded
    task_id: int | None  # the task enqueued for it (None: not taken, or skipped)
    live_id: int | None  # skipped: the earlier run still pending or in progress
    live_status: str | None
    live_started: bool | None  # in progress: its handler started (started_at is set)


class LastTick(NamedTuple):
    task: str
    tick: datetime
    task_id: int | None  # None: the tick was skipped
    status: str | None  # the task's status (None: skipped, or pruned since)
    started: bool  # its handler started (started_at is set)


def enqueue_tick(db: Database, *, task: str, tick: datetime, since: datetime,
                 queue: str, priority: int, payload: str | None,
                 skip_if_running: bool, arguments: str | None = None) -> TickTaken:
    """Take tick `tick` of periodic task `task` and enqueue its run (with the
    text `payload`, or the JSON call `arguments`), in one statement; safe to
    send again (a tick is taken once)."""
    row = db.query(sql.enqueue_tick, {
        "task": task, "tick": tick, "since": since, "queue": queue, "priority": priority,
        "payload": payload, "arguments": arguments, "skip_if_running": skip_if_running})[0]
    return TickTaken(*row)


def last_ticks(db: Database) -> dict[str, LastTick]:
    """The latest recorded tick of every periodic task that has one, by task."""
    return {row[0]: LastTick(*row) for row in db.query(sql.schedule_ticks)}


def live_schedules(db: Database) -> dict[str, dict[str, Any]]:
    """Each live serve process's schedules (task name -> "cron ..."/"every Ns"),
    by holder."""
    return {holder: dict(schedules or {}) for holder, schedules in db.query(sql.live_schedules)}
