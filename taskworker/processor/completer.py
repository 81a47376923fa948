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

from .store import sql
from .db import CONNECTION_ERRORS, Link, first_line
from .inflight import DONE, ERROR, RELEASE, RETRY, InFlight, Outcome
from .logs import log
from .settings import Settings

BATCH_MAX = 1000  # outcomes in one statement
_STATUS = {DONE: "done", ERROR: "error", RETRY: "pending", RELEASE: "pending"}


class Completer:
    def __init__(self, settings: Settings, holder: str, inflight: InFlight,
                 should_stop: Callable[[], bool],
                 retry_scheduled: Callable[[], None] = lambda: None) -> None:
        self.holder = holder
        # Called once a retry with a backoff is written: the fetcher may have
        # worked out its sleep from the row while it was still in progress.
        self.retry_scheduled = retry_scheduled
        self.inflight = inflight
        self.link = Link(settings, "completer", should_stop=should_stop)
        self.outcomes: Queue = Queue()
        self.written = 0  # outcomes the database accepted
        self.counts = dict.fromkeys((DONE, ERROR, RETRY, RELEASE), 0)  # written, by kind
        self.lease_lost = 0  # outcomes fenced off: another process took the task over

    def put(self, outcome: Outcome) -> None:
        self.outcomes.put(outcome)

    def stop(self) -> None:
        """Ask run() to write what is queued, then return."""
        self.outcomes.put(None)

    def pending(self) -> int:
        return self.outcomes.qsize()

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.outcomes.get()
            if first is None:
                stopping = True
                batch = []
            else:
                batch = [first]
            while len(batch) < BATCH_MAX and not self.outcomes.empty():
                item = self.outcomes.get_nowait()
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            if batch:
                self.write(batch)
        self.link.close()

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
        rows = self.link.query(sql.complete, {
            "holder": self.holder,
            "ids": [o.task.id for o in batch],
            "attempts": [o.task.attempt for o in batch],
            "statuses": [_STATUS[o.kind] for o in batch],
            "results": [o.result for o in batch],
            "errors": [o.error for o in batch],
            "delays": [o.delay for o in batch],
            "uncounts": [1 if o.kind == RELEASE else 0 for o in batch],
        })
        written = {row[0] for row in rows}
        if any(o.kind == RELEASE or (o.kind == RETRY and not o.delay)
               for o in batch if o.task.id in written):
            self.link.query(sql.wake_others)
        if any(o.kind == RETRY and o.delay for o in batch if o.task.id in written):
            self.retry_scheduled()
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
            self.inflight.discard(task.id)
            if task.id not in written:
                self.lease_lost += 1
                log.warning("[Worker %d] Task ID: %d lease lost, result discarded",
                            o.worker, task.id, extra=_fields(o))
                continue
            self.written += 1
            self.counts[o.kind] += 1
            if not info:
                continue
            if o.kind in (DONE, ERROR):
                log.info("[Worker %d] Task ID: %d processed with status: %s",
                         o.worker, task.id, o.kind, extra=_fields(o))
            elif o.kind == RETRY:
                log.info("[Worker %d] Task ID: %d failed on attempt %d, retrying in %.1fs: %s",
                         o.worker, task.id, task.attempt, o.delay or 0, o.error,
                         extra=_fields(o))
            elif o.worker:
                log.info("[Worker %d] Task ID: %d given back to pending",
                         o.worker, task.id, extra=_fields(o))


def _fields(o: Outcome) -> dict[str, object]:
    return {"task_id": o.task.id, "worker": o.worker or None, "attempt": o.task.attempt}

