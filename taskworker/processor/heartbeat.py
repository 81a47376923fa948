"""Keeps this process's leases alive, and lets go of those it cannot keep.

Every third of LEASE_SECONDS one statement extends the lease of every task the
process holds (queued or running); with nothing held it checks the connection
instead; either way it refreshes the process's row in taskworker_processes
(presence.py), and looks for a transaction that holds vacuum back (horizon.py).
A task the statement does not return was taken away (its lease expired and
another process rescued it): it is marked lost, so a worker skips it if it has
not started it yet.

A process holds no claim it cannot keep. While renewals fail (the heartbeat's
connection is down, or cannot be had for want of connection slots) the fetcher
claims nothing, and the lease guard stops each running task whose lease would
run out unrenewed within a third of LEASE_SECONDS, and gives it back: its
attempt is not counted and no rescue is charged, instead of a run whose result
would be discarded. The same guard ends the work of a process frozen past its
leases (SIGSTOP, a suspended VM) as soon as it runs again. Giving back is a write,
through the exchange's writing lane: a process short of connection slots for that
too cannot give anything back, and its leases run out (shortage.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection
from ..store.tasks import ClaimedTask
from .dispatch import Dispatch
from .horizon import HorizonWatch
from .presence import Presence


class LeaseExpiring(BaseException):
    """Raised in a worker whose task's lease is about to run out unrenewed. A
    BaseException, like gevent.Timeout, so that a handler's `except Exception`
    does not swallow it."""


def stop_cancelled(dispatch: Dispatch, task_ids: list[int]) -> None:
    """`taskworker cancel` asked to stop these tasks: kill the worker greenlet of
    each one running here (the handler sees GreenletExit at its next cooperative
    point, and the worker writes `cancelled`); one still queued is cancelled by
    the worker that takes it, without running."""
    for worker, task, greenlet in dispatch.cancel_requested(task_ids):
        log.info("[Worker %d] Task ID: %d cancel requested: stopping it", worker, task.id,
                 extra={"task_id": task.id, "worker": worker, "attempt": task.attempt})
        greenlet.kill(block=False)


class Heartbeat:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch,
                 should_stop: Callable[[], bool]) -> None:
        self.lease = settings.lease_seconds
        self.margin = settings.lease_seconds / 3  # two renewals missed
        self.holder = holder
        self.dispatch = dispatch
        self.db = ReconnectingConnection(settings, "heartbeat", should_stop=should_stop)
        self.presence = Presence(settings, holder)  # this process's row, touched every beat
        self.horizon = HorizonWatch()  # names a transaction that holds vacuum back
        self._renewed_at: float | None = None  # monotonic start of the last good renewal
        self._stopped: set[int] = set()  # tasks the guard has stopped
        self._soon = Event()  # beat now, not at the next third of the lease
        self._durable: dict[int, Event] = {}  # starts a worker waits to see written

    def renewing(self) -> bool:
        """Are leases being renewed? The fetcher claims only while they are."""
        return (self._renewed_at is not None
                and time.monotonic() - self._renewed_at < self.lease / 2
                and not self.db.failing)

    def run(self) -> None:
        while True:
            self.beat()
            self._soon.wait(self.lease / 3)
            self._soon.clear()

    def started(self, task: ClaimedTask) -> Event | None:
        """A worker starts `task` (the dispatch knows since when): its start is
        written by the next beat. For a task once lost unstarted, an Event the
        worker waits on before its handler runs, set once the start is written
        (see ClaimedTask.start_durably); the beat comes at once."""
        if not task.start_durably:
            return None
        event = self._durable[task.id] = Event()
        self._soon.set()
        return event

    def beat(self) -> None:
        was_renewing = self.renewing()
        started = time.monotonic()
        holds = self.dispatch.holds()
        ids = [task_id for task_id, _ in holds]
        if holds:
            agos = self.dispatch.started_ago(ids)
            kept = store.heartbeat(self.db, holder=self.holder, holds=holds, lease=self.lease,
                                   started=agos)
            # Only the starts this beat carried (one that came while it was on the
            # wire goes with the next: a worker waiting for it goes on only then).
            written = [i for i, ago in zip(ids, agos, strict=True) if ago is not None]
            self.dispatch.starts_written(written)
            for task_id in written:
                if (event := self._durable.pop(task_id, None)) is not None:
                    event.set()
            self.dispatch.renewed(kept.ids, started + self.lease)
            self.dispatch.mark_lost([i for i in ids if i not in kept.ids])
            if kept.cancel:  # (with LISTEN on, the listener has usually done it already)
                stop_cancelled(self.dispatch, kept.cancel)
        self.presence.touch(self.db)  # (with nothing held, also the connection's check)
        self._renewed_at = started
        self.horizon.look(self.db)
        if not was_renewing:
            self.dispatch.wake()  # the fetcher may claim (again)

    def guard(self) -> None:
        """Service: stop running tasks whose lease is about to run out unrenewed."""
        while True:
            gevent.sleep(min(1.0, self.lease / 6))
            self._stop_ending()

    def _stop_ending(self) -> None:
        """One look of the guard. (A method of its own: the guard's loop keeps
        none of the tasks it stopped, nor their payloads, while it sleeps.)"""
        for worker, task, greenlet in self.dispatch.running_with_lease_ending(self.margin):
            if task.id in self._stopped:
                continue
            self._stopped.add(task.id)
            log.warning("[Worker %d] Task ID: %d stopped: its lease would run out "
                        "unrenewed; giving it back", worker, task.id,
                        extra={"task_id": task.id, "worker": worker, "attempt": task.attempt})
            greenlet.kill(LeaseExpiring(), block=False)
        self._stopped &= set(self.dispatch.held_ids())
