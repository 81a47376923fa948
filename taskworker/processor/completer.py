"""Writes task outcomes to the database, many per statement, fenced.

Workers hand their outcomes to one completer greenlet (with its own connection)
instead of writing them themselves: while one batch is on the wire the next one
gathers, so a busy process sends one UPDATE for many tasks and an idle one still
writes each outcome at once. Every row is written only if this process still
holds that attempt; the rest are reported as lease lost.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from gevent.queue import Queue

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import CONNECTION_ERRORS, ReconnectingConnection
from ..store.database import first_line
from .dispatch import Dispatch
from .outcomes import DONE, ERROR, GIVE_BACK, KINDS, RETRY, Outcome

BATCH_MAX = 1000  # outcomes in one statement
BACKLOG_MAX = 1000  # outcomes waiting to be written beyond which claiming pauses


class Completer:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch,
                 should_stop: Callable[[], bool]) -> None:
        self.holder = holder
        self.dispatch = dispatch
        self.db = ReconnectingConnection(settings, "completer", should_stop=should_stop)
        self._outcomes: Queue = Queue()
        self._unwritten = 0  # outcomes handed over and not yet written (or fenced off)
        self._written = dict.fromkeys(KINDS, 0)  # outcomes written, by kind
        self._lease_lost = 0  # outcomes fenced off: another process took the task over

    def put(self, outcome: Outcome) -> None:
        self._unwritten += 1
        self._outcomes.put(outcome)

    def stop(self) -> None:
        """Ask run() to write what is queued, then return."""
        self._outcomes.put(None)

    def unwritten(self) -> int:
        return self._unwritten

    def backlogged(self) -> bool:
        """Outcomes pile up unwritten (the database is slow or away): the fetcher
        claims nothing more until they are written, so memory and held leases
        stay bounded."""
        return self._unwritten >= BACKLOG_MAX

    def stats(self) -> dict[str, int]:
        w = self._written
        return {"done": w[DONE], "error": w[ERROR], "retried": w[RETRY],
                "given_back": w[GIVE_BACK], "lease_lost": self._lease_lost,
                "unwritten": self._unwritten}

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self._outcomes.get()
            if first is None:
                stopping = True
                batch = []
            else:
                batch = [first]
            while len(batch) < BATCH_MAX and not self._outcomes.empty():
                item = self._outcomes.get_nowait()
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            if batch:
                self.write(batch)
        self.db.close()

    def write(self, batch: list[Outcome]) -> None:
        """Write a batch; on a statement error, write one by one so one bad row
        cannot hold back the others."""
        try:
            written = self._send(batch)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            if len(batch) == 1:
                batch, written = self._store_failure(batch[0], exc)
            else:
                for outcome in batch:
                    self.write([outcome])
                return
        self._report(batch, written)

    def _send(self, batch: list[Outcome]) -> set[int]:
        written = store.complete(self.db, holder=self.holder, writes=[o.write() for o in batch])
        landed = [o for o in batch if o.task.id in written]
        if any(o.wakes_others for o in landed):
            store.wake_others(self.db)
        if any(o.kind == RETRY and o.delay for o in landed):
            # The fetcher may have worked out its sleep while the row was still
            # in progress: let it look at the new run_at.
            self.dispatch.wake()
        return written

    def _store_failure(self, outcome: Outcome, exc: Exception,
                       ) -> tuple[list[Outcome], set[int]]:
        """The outcome itself could not be stored (say, a result PostgreSQL
        refuses): store that as the task's error instead. Returns the outcome to
        report (the error, if it was stored) and the ids written."""
        message = f"could not store result: {type(exc).__name__}: {first_line(exc)}"
        failed = Outcome(outcome.task, outcome.worker, ERROR, error=message)
        try:
            return [failed], self._send([failed])
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            log.error("Task ID: %d outcome could not be written: %s; it will be rescued",
                      outcome.task.id, first_line(exc))
            return [outcome], set()

    def _report(self, batch: list[Outcome], written: set[int]) -> None:
        info = log.isEnabledFor(logging.INFO)
        for o in batch:
            task = o.task
            self.dispatch.settle(task.id)
            self._unwritten -= 1
            if task.id not in written:
                self._lease_lost += 1
                log.warning("[Worker %d] Task ID: %d lease lost, result discarded",
                            o.worker, task.id, extra=_fields(o))
                continue
            self._written[o.kind] += 1
            if not info:
                continue
            if o.kind in (DONE, ERROR):
                log.info("[Worker %d] Task ID: %d processed with status: %s",
                         o.worker, task.id, o.kind, extra=_fields(o))
            elif o.kind == RETRY:
                log.info("[Worker %d] Task ID: %d failed on attempt %d, retrying in %.1fs: %s",
                         o.worker, task.id, task.attempt, o.delay or 0, o.error,
                         extra=_fields(o))
            elif o.kind == GIVE_BACK and o.worker:
                log.info("[Worker %d] Task ID: %d given back to pending",
                         o.worker, task.id, extra=_fields(o))


def _fields(o: Outcome) -> dict[str, object]:
    return {"task_id": o.task.id, "worker": o.worker or None, "attempt": o.task.attempt}
