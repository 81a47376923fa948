"""The table of running serve processes (taskworker_processes), paused queues,
and which process reports the table's metrics (taskworker_metrics_reporter).

Each serve records itself when it starts (what it serves, where it runs), its
heartbeat refreshes `seen_at` on every beat, and a clean shutdown deletes the row.
A process killed outright leaves its row behind: `live` ignores it once two of
its leases pass unseen, and `reap` deletes it after ten. `status`, the metrics
and the dashboard read the live ones, to say which queues and task names no
running process serves.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from . import sql
from .database import Database


class Process(NamedTuple):
    holder: str
    host: str
    pid: int
    queues: list[str] | None  # None: every queue
    tasks: list[str]  # the task names it has registered
    default_handler: bool  # runs tasks without a name
    schedules: dict[str, str]  # periodic task name -> "cron ..." or "every Ns"
    lease_seconds: float
    started_at: datetime
    up_seconds: float  # since it started
    seen_seconds_ago: float  # since its heartbeat last refreshed the row

    def serves(self, queue: str, task: str | None) -> bool:
        """Does this process claim tasks named `task` (None: no name) from `queue`?"""
        if self.queues is not None and queue not in self.queues:
            return False
        return self.default_handler if task is None else task in self.tasks


class PausedQueue(NamedTuple):
    queue: str
    paused_at: datetime
    seconds: float  # since it was paused


def register(db: Database, *, holder: str, host: str, pid: int,
             queues: Sequence[str] | None, tasks: Sequence[str], default_handler: bool,
             schedules: Mapping[str, str], lease_seconds: float, listens: bool = True) -> None:
    """Record `holder` (or refresh its row): what it serves, and that it is alive
    now. A process that `listens` is recorded asleep (inserts notify it) until it
    says it is busy (`awake`); one that does not listen never asks to be woken."""
    db.query(sql.process_register, {
        "holder": holder, "host": host, "pid": pid,
        "queues": None if queues is None else list(queues), "tasks": list(tasks),
        "default_handler": default_handler, "schedules": json.dumps(dict(schedules)),
        "lease_seconds": lease_seconds, "asleep": listens})


class Mark(NamedTuple):
    """What `asleep` did."""

    locked: bool  # it had the lock: no producer was between its look and its commit
    marked: bool  # the row says asleep (False with `locked`: the row is missing)


def asleep(db: Database, holder: str) -> Mark:
    """Record that `holder` may sleep until a NOTIFY: from the commit on, every
    insert notifies. Refused (locked False) while an insert that looked for
    sleepers before it is not yet committed: its row may be missed by a claim
    sent now, and no notification would come."""
    locked, marked = db.query(sql.process_asleep, {"holder": holder})[0]
    return Mark(bool(locked), bool(marked))


def awake(db: Database, holder: str) -> None:
    """`holder` claims again at once: inserts need not notify it."""
    db.query(sql.process_awake, {"holder": holder})


def touch(db: Database, holder: str) -> bool:
    """`holder` is alive now; False when its row is gone (register it again)."""
    return bool(db.query(sql.process_touch, {"holder": holder}))


def unregister(db: Database, holder: str) -> None:
    db.query(sql.process_unregister, {"holder": holder})


def reap(db: Database) -> list[str]:
    """Delete the rows of processes unseen for ten of their leases; their holders."""
    return sorted(row[0] for row in db.query(sql.process_reap))


def live(db: Database) -> list[Process]:
    """Processes seen within two of their leases, oldest first."""
    return [Process(holder, host, pid, queues, list(tasks), default_handler,
                    _schedules(schedules), float(lease), started, float(up), float(seen))
            for (holder, host, pid, queues, tasks, default_handler, schedules, lease,
                 started, up, seen) in db.query(sql.process_live)]


def claim_reporter(db: Database, holder: str, seconds: float) -> bool:
    """Take or keep the metrics reporter's row for `seconds`; True: `holder` has it."""
    return bool(db.query(sql.reporter_claim, {"holder": holder, "seconds": seconds}))


def release_reporter(db: Database, holder: str) -> None:
    """Hand the reporter's row back, if `holder` has it."""
    db.query(sql.reporter_release, {"holder": holder})


def pause(db: Database, queues: Sequence[str]) -> set[str]:
    """Pause `queues`; the ones that were not paused yet."""
    return {row[0] for row in db.query(sql.queue_pause, {"queues": list(queues)})}


def resume(db: Database, queues: Sequence[str]) -> set[str]:
    """Resume `queues`; the ones that were paused."""
    return {row[0] for row in db.query(sql.queue_resume, {"queues": list(queues)})}


def paused(db: Database) -> list[PausedQueue]:
    """Every paused queue, by name."""
    return [PausedQueue(queue, at, float(seconds))
            for queue, at, seconds in db.query(sql.queue_paused)]


def _schedules(value: Any) -> dict[str, str]:
    """jsonb arrives decoded (a dict) from psycopg2; as text through some poolers."""
    if isinstance(value, str):
        value = json.loads(value)
    return {str(k): str(v) for k, v in (value or {}).items()}
