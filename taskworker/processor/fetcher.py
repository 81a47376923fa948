"""Claims tasks for the workers, and rescues tasks whose worker vanished.

The fetcher asks only for what can start soon: as many tasks as there are idle
workers plus a prefetch of one round, at most FETCH_LIMIT per claim. It claims
again at once while claims come back full, and otherwise sleeps until a NOTIFY,
a worker going idle, the next retry or lease expiry falling due, or
FETCH_INTERVAL, whichever comes first.

A task whose worker was lost MAX_RESCUES times (the rescue flags it run_alone)
gets its last run alone: the fetcher stops claiming, waits until every task it
holds is run and written, claims that one task, and waits for it in turn. If it
kills the process again, only that task is charged and parked, not the innocent
tasks that would have run beside it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from gevent.event import Event
from gevent.queue import Queue

from .store import sql
from .db import Link
from .inflight import InFlight, Task
from .logs import log
from .settings import Settings

RESCUE_EVERY = 1.0  # seconds between rescue checks while busy
DRAIN_POLL = 0.05  # seconds between checks while draining for a task that runs alone
BACKLOG_MAX = 1000  # outcomes waiting to be written beyond which claiming pauses
BACKLOG_POLL = 0.01  # seconds between checks while paused


class Fetcher:
    def __init__(self, settings: Settings, holder: str, inflight: InFlight, queue: Queue,
                 idle_workers: Callable[[], int], should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.holder = holder
        self.inflight = inflight
        self.queue = queue
        self.idle_workers = idle_workers
        self.should_stop = should_stop
        self.wake = Event()  # set by the listener, idle workers and shutdown
        self.link = Link(settings, "fetcher", should_stop=should_stop,
                         on_reconnect=self._reconnected)
        self._orphans_possible = False
        self._next_rescue = 0.0
        self._alone_waiting = False  # a task that must run alone may be due
        self.claimed = 0  # tasks claimed since start
        self.rescued = 0  # tasks this process rescued from lost workers

    def slots(self) -> int:
        """How many tasks to claim now: 0 while the workers have enough."""
        queued = self.queue.qsize()
        idle = self.idle_workers()
        free = idle + self.settings.worker_count - queued
        batch = min(self.settings.fetch_limit, self.settings.worker_count)
        if idle > queued or free >= max(1, batch // 2):
            return min(free, self.settings.fetch_limit)
        return 0

    def backlogged(self) -> bool:
        """Outcomes pile up unwritten (the completer is stalled on the database):
        claim nothing more until they are written, so memory and held leases stay
        bounded."""
        running = self.settings.worker_count - self.idle_workers()
        unwritten = len(self.inflight) - self.queue.qsize() - running
        return unwritten >= BACKLOG_MAX

    def run(self) -> None:
        while not self.should_stop():
            self.wake.clear()
            if self._orphans_possible:
                self._release_orphans()
            if time.monotonic() >= self._next_rescue:
                self.rescue()
            if self._alone_waiting:
                self._run_alone()
                continue
            if self.backlogged():
                self.wake.wait(BACKLOG_POLL)
                continue
            want = self.slots()
            if want <= 0:
                self.wake.wait(self.settings.fetch_interval)
                continue
            got = len(self.claim(want))
            if got:
                log.info("Fetched %d tasks", got)
            if got < want and not self.should_stop():
                self.wake.wait(self._idle_wait())

    def claim(self, limit: int, alone: bool = False) -> list[Task]:
        """Claim up to `limit` tasks (with `alone`: only tasks that must run alone)
        and queue them for the workers, oldest first."""
        rows = self.link.query(sql.claim, {"limit": limit, "alone": alone,
                                           "holder": self.holder,
                                           "lease": self.settings.lease_seconds})
        tasks = [Task(*row) for row in sorted(rows)]
        for task in tasks:
            self.inflight.add(task)
            self.queue.put(task)
        self.claimed += len(tasks)
        return tasks

    def rescue(self) -> None:
        """Take back tasks whose lease expired: their process stopped responding."""
        self._next_rescue = time.monotonic() + min(RESCUE_EVERY, self.settings.fetch_interval)
        rows = self.link.query(sql.rescue, {"max_rescues": self.settings.max_rescues})
        if not self._alone_waiting:  # (even with MAX_RESCUES=0: flagged by an earlier run)
            self._alone_waiting = self.link.query(sql.alone_waiting)[0][0]
        if not rows:
            return
        back = sorted(task_id for task_id, status in rows if status == "pending")
        parked = sorted(task_id for task_id, status in rows if status == "error")
        self.rescued += len(rows)
        log.warning("Rescued %d tasks whose worker stopped responding: %s",
                    len(rows), ", ".join(map(str, sorted(back + parked))))
        for task_id in parked:
            log.warning("Task ID: %d parked in error: its worker was lost more than "
                        "MAX_RESCUES=%d times", task_id, self.settings.max_rescues,
                        extra={"task_id": task_id})
        if back:
            self.link.query(sql.wake_others)

    def _run_alone(self) -> None:
        """Drain, then claim one task that must run alone and let it finish."""
        if len(self.inflight):  # claimed tasks not yet run and written
            self.wake.wait(DRAIN_POLL)
            return
        tasks = self.claim(1, alone=True)
        if not tasks:
            self._alone_waiting = False
            return
        task = tasks[0]
        log.warning("Task ID: %d lost its worker %d times: running it alone",
                    task.id, task.rescues, extra={"task_id": task.id})

    def _idle_wait(self) -> float:
        """Seconds to sleep when the table had nothing for us."""
        retry_due, lease_due = self.link.query(sql.next_due)[0]
        wait = self.settings.fetch_interval
        for due in (retry_due, lease_due):
            if due is not None:
                wait = min(wait, max(float(due), 0.0) + 0.01)
        return wait

    def _reconnected(self) -> None:
        # A claim may have committed while its reply was lost with the old
        # connection: those rows are ours in the table but unknown here.
        self._orphans_possible = True
        self.wake.set()

    def _release_orphans(self) -> None:
        self._orphans_possible = False
        rows = self.link.query(sql.release_orphans,
                               {"holder": self.holder, "known": self.inflight.ids()})
        if rows:
            log.warning("Gave back %d tasks claimed before the connection was lost: %s",
                        len(rows), ", ".join(str(r[0]) for r in sorted(rows)))
