"""Enqueues the runs of periodic tasks (`cron=` or `every=`) at their ticks.

Every serve process that registers periodic tasks runs a scheduler, and they do
not talk to each other: each computes the same ticks (schedules.py) and offers
each tick to the database, which takes it once (taskworker_ticks' primary key,
written in the statement that inserts the run). So a tick is enqueued once
however many processes run, and stays taken after its task is pruned.

The loop sleeps until the next tick of any task, computed from the wall clock
each time, so it does not drift; then it offers the latest due tick of each
task. Only the latest: after every process was down, the ticks missed meanwhile
are not enqueued one by one, only the last of them. A tick that finds the
previous run of its task still pending or in progress (claimed by a process,
started or not) is skipped (taken without a run), unless the task says
skip_if_running=False; the line says which: still pending, still waiting to
start in a process (claimed: started_at not set), or still running. A schedule
no running process registers any more enqueues nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import gevent

from ..logs import log
from ..registry import DEFAULT_QUEUE, TaskDef
from ..schedules import Schedule, latest_tick, next_tick, show
from ..settings import Settings
from ..store import admin
from ..store import schedules as store
from ..store.connection import ReconnectingConnection

LONGEST_SLEEP = 60.0  # seconds: look at the wall clock again at least this often
STILL = {admin.CLAIMED: "waiting to start in a process"}  # else "still <state>"


class Scheduler:
    def __init__(self, settings: Settings, holder: str, definitions: list[TaskDef],
                 should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.holder = holder
        self.definitions = [d for d in definitions if d.periodic]
        self.schedules = {d.name: Schedule.of(d) for d in self.definitions}
        self.should_stop = should_stop
        self.db = ReconnectingConnection(settings, "scheduler", should_stop=should_stop)
        self.started = _now()  # a task never run before starts with a tick after this
        self._offered: dict[str, datetime] = {}  # latest tick offered, by task
        self._enqueued = 0
        self._skipped = 0

    def stats(self) -> dict[str, int]:
        return {"enqueued": self._enqueued, "skipped": self._skipped}

    def run(self) -> None:
        tz = self.settings.cron_tz
        while not self.should_stop():
            now = _now()
            for definition in self.definitions:
                tick = latest_tick(self.schedules[definition.name], now, tz)
                if tick != self._offered.get(definition.name):
                    self.offer(definition, tick)
                    self._offered[definition.name] = tick
                    if self.should_stop():
                        return
            wake = min(next_tick(schedule, now, tz) for schedule in self.schedules.values())
            gevent.sleep(min(max((wake - _now()).total_seconds(), 0.0), LONGEST_SLEEP))

    def offer(self, definition: TaskDef, tick: datetime) -> None:
        """Offer one tick to the database; say what came of it."""
        name = definition.name
        done = store.enqueue_tick(
            self.db, task=name, tick=tick, since=self.started,
            queue=definition.queue or DEFAULT_QUEUE, priority=definition.priority or 0,
            payload=definition.payload, skip_if_running=definition.skip_if_running,
            arguments=definition.arguments)
        if done.task_id is not None:
            self._enqueued += 1
            log.info("Enqueued periodic task %s (tick %s) as task ID %d",
                     name, show(tick), done.task_id, extra={"task_id": done.task_id})
        elif done.taken:
            self._skipped += 1
            state = admin.state(done.live_status or "", bool(done.live_started))
            log.info("Skipped tick %s of periodic task %s: its previous run (ID %d) is "
                     "still %s", show(tick), name, done.live_id, STILL.get(state, state))


def _now() -> datetime:
    return datetime.now(UTC)
