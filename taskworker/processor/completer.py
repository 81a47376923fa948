"""Writes task outcomes to the database, many per statement, fenced.

Workers hand their outcomes to one completer greenlet (with its own connection)
instead of writing them themselves: while one batch is on the wire the next one
gathers, so a busy process sends one UPDATE for many tasks and an idle one still
writes each outcome at once. In a busy process both go with claims instead
(claim_shares_completing: one round trip per batch): the fetcher's claim takes
the outcomes waiting (`take`), and while it is on the wire the completer writes
its batch with a claim of its own (Fetcher.claim_along), so two claims are in
flight, each carrying the last outcomes.

A batch holds at most BATCH_MAX outcomes and BATCH_BYTES of results (one large
result goes alone), and a batch the server cancels (statement_timeout) is split
in halves, so one outcome never holds back the others. Every row is written only
if this process still has that hold (its fence); the rest are reported as lease lost,
after a check of the rows when the connection was lost mid-write (the write may
have committed, its reply lost).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg2.errors
from gevent.queue import Queue

from ..logs import log
from ..settings import Settings
from ..store import completion
from ..store import tasks as store
from ..store.connection import CONNECTION_ERRORS, ReconnectingConnection, Stopped
from ..store.database import first_line
from . import memory
from .dispatch import Dispatch
from .landed import confirm, fields
from .outcomes import CANCEL, DONE, ERROR, GIVE_BACK, KINDS, REFUSE, RETRY, SNOOZE, Outcome

BATCH_MAX = 1000  # outcomes in one statement
BATCH_BYTES = 4 * 1024 * 1024  # bytes of results in one statement (at least one outcome)
# Outcomes waiting to be written beyond which claiming pauses (Completer.backlogged):
# a few batches, as a busy process has two on the wire (each with up to a claim of
# AUTO_LIMIT) while the next gathers; and at least two rounds of the workers, as
# ten thousand tasks started together also end together.
BACKLOG_BATCHES = 4
BACKLOG_ROUNDS = 2


class Completer:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch,
                 should_stop: Callable[[], bool], frees_slots: bool = True) -> None:
        self.holder = holder
        self._backlog_max = max(BACKLOG_BATCHES * BATCH_MAX,
                                BACKLOG_ROUNDS * settings.worker_count)
        self.frees_slots = frees_slots  # runs a task with a concurrency limit (max_running)
        self.dispatch = dispatch
        self.db = ReconnectingConnection(settings, "completer", should_stop=should_stop,
                                         prepare=True)
        self._outcomes: Queue = Queue()
        self._carried: Outcome | None = None  # taken from the queue, left for the next batch
        self._unwritten = 0  # outcomes handed over and not yet written (or fenced off)
        self._written = dict.fromkeys(KINDS, 0)  # outcomes written, by kind
        self._lease_lost = 0  # outcomes fenced off: another process took the task over
        # Fetcher.claim_along: write a batch with a claim, if one is due (True).
        self.claim_along: Callable[[ReconnectingConnection, list[Outcome]], bool] | None = None
        # The holds of outcomes a claim took and gave back after losing its
        # connection: they may have been written (see _send).
        self._uncertain: set[tuple[int, int]] = set()

    def put(self, outcome: Outcome) -> None:
        self._unwritten += 1
        self._outcomes.put(outcome)

    # --- the fetcher's side: outcomes written along with a claim

    def take(self) -> list[Outcome]:
        """The outcomes waiting now (at most a batch), for the fetcher to write
        with its claim; none while the process holds concurrency slots (the
        claim does not free them). They stay unwritten until `landed` or
        `give_back` is called with them."""
        if self.frees_slots:
            return []
        batch: list[Outcome] = []
        size = 0
        while len(batch) < BATCH_MAX and not self._outcomes.empty():
            item = self._outcomes.peek()
            if item is None or (batch and size + item.size > BATCH_BYTES):
                break  # (stop() is for run(); a large result goes in a batch of its own)
            batch.append(self._outcomes.get_nowait())
            size += item.size
        return batch

    def landed(self, batch: list[Outcome], written: set[tuple[int, int]]) -> None:
        """`take`n outcomes were sent with a claim: `written` are in the table,
        the others were fenced off."""
        self._report(batch, written)

    def give_back(self, batch: list[Outcome]) -> None:
        """`take`n outcomes were not written with the claim: the completer writes
        them (checking the rows first for those marked `maybe_written`)."""
        for outcome in batch:
            self._outcomes.put(outcome)

    def maybe_written(self, batch: list[Outcome]) -> None:
        """A statement carrying these outcomes lost its connection and then
        failed: it may have committed them, and their write will check the rows."""
        self._uncertain.update(o.task.hold for o in batch)

    # --- the processor's side

    def stop(self) -> None:
        """Ask run() to write what is queued, then return."""
        self._outcomes.put(None)

    def unwritten(self) -> int:
        return self._unwritten

    def backlogged(self) -> bool:
        """Outcomes pile up unwritten (the database is slow or away): the fetcher
        claims nothing more until they are written, so memory and held leases
        stay bounded."""
        return self._unwritten >= self._backlog_max

    def stats(self) -> dict[str, int]:
        w = self._written
        return {"done": w[DONE], "error": w[ERROR], "retried": w[RETRY],
                "given_back": w[GIVE_BACK], "cancelled": w[CANCEL], "snoozed": w[SNOOZE],
                "lease_lost": self._lease_lost,
                "unwritten": self._unwritten}

    def run(self) -> None:
        # Connect now, not at the first outcome: ready when it comes. A statement,
        # not just a connect: only a statement that succeeds clears a failure the
        # connect went through (else /healthz reports an idle completer down).
        store.ping(self.db)
        stopping = False
        while not stopping or self._carried is not None:
            batch, stopping = self._gather(stopping)
            if batch:
                if not self._claimed_along(batch):
                    self.write(batch)
                large = sum(o.size + len(o.task.payload or "") for o in batch) >= memory.LARGE
                del batch
                if large:
                    self.db.recycle()
                    memory.give_back()
        self.db.close()

    def _gather(self, stopping: bool) -> tuple[list[Outcome], bool]:
        """The next batch: what is queued now, within BATCH_MAX and BATCH_BYTES
        (waiting for one outcome if none is); and whether stop() was asked."""
        batch: list[Outcome] = []
        size = 0
        while len(batch) < BATCH_MAX:
            if self._carried is not None:
                item, self._carried = self._carried, None
            elif batch or stopping:
                if self._outcomes.empty():
                    break
                item = self._outcomes.get_nowait()
            else:
                item = self._outcomes.get()
            if item is None:
                stopping = True
                continue
            if batch and size + item.size > BATCH_BYTES:
                self._carried = item
                break
            batch.append(item)
            size += item.size
        return batch, stopping

    def _claimed_along(self, batch: list[Outcome]) -> bool:
        """Write the batch with a claim (Fetcher.claim_along), if one is due.
        False: nothing was written (none was due, or the statement was refused,
        which write() then meets outcome by outcome)."""
        return self.claim_along is not None and not self.frees_slots \
            and self.claim_along(self.db, batch)

    def write(self, batch: list[Outcome]) -> None:
        """Write a batch. Cancelled by statement_timeout: write each half on its
        own. Refused for another reason: write one by one, so one bad row cannot
        hold back the others."""
        try:
            written = self._send(batch)
        except psycopg2.errors.QueryCanceled as exc:
            if len(batch) == 1:
                batch, written = self._store_failure(batch[0], exc)
            else:
                log.warning("Writing %d outcomes took longer than STATEMENT_TIMEOUT; "
                            "writing them in two halves", len(batch))
                half = len(batch) // 2
                self.write(batch[:half])
                self.write(batch[half:])
                return
        except (*CONNECTION_ERRORS, Stopped):  # not sent, or not known to be written:
            raise  # the outcomes stay unwritten (their leases return the tasks)
        except Exception as exc:  # PostgreSQL refused the statement
            if len(batch) == 1:
                batch, written = self._store_failure(batch[0], exc)
            else:
                for outcome in batch:
                    self.write([outcome])
                return
        self._report(batch, written)

    def _send(self, batch: list[Outcome]) -> set[tuple[int, int]]:
        """Write the batch; the holds (id, fence) whose outcome is now in the table."""
        reconnects = self.db.reconnects
        written = completion.complete(self.db, holder=self.holder,
                                      writes=[o.write() for o in batch],
                                      frees_slots=self.frees_slots)
        uncertain = self._uncertain and any(
            o.task.hold in self._uncertain for o in batch)
        written = confirm(self.db, batch, written,
                          lost=self.db.reconnects != reconnects or bool(uncertain))
        if uncertain:
            self._uncertain.difference_update(o.task.hold for o in batch)
        landed = [o for o in batch if o.task.hold in written]
        if any(o.kind in (RETRY, SNOOZE) and o.delay for o in landed):
            # The fetcher may have worked out its sleep while the row was still
            # in progress: let it look at the new run_at.
            self.dispatch.wake()
        return written

    def _store_failure(self, outcome: Outcome, exc: Exception,
                       ) -> tuple[list[Outcome], set[tuple[int, int]]]:
        """The outcome itself could not be stored (say, a result PostgreSQL
        refuses): store that as the task's error instead. Returns the outcome to
        report (the error, if it was stored) and the ids written."""
        message = f"could not store result: {type(exc).__name__}: {first_line(exc)}"
        failed = Outcome(outcome.task, outcome.worker, ERROR, error=message)
        try:
            written = self._send([failed])
        except psycopg2.errors.QueryCanceled as exc:  # (an OperationalError, but no loss)
            log.error("Task ID: %d outcome could not be written: %s; it will be rescued",
                      outcome.task.id, first_line(exc))
            return [outcome], set()
        except (*CONNECTION_ERRORS, Stopped):
            raise
        except Exception as exc:
            log.error("Task ID: %d outcome could not be written: %s; it will be rescued",
                      outcome.task.id, first_line(exc))
            return [outcome], set()
        if written:  # a warning, as the worker's `failed:` line
            log.warning("%sTask ID: %d failed: %s",
                        f"[Worker {outcome.worker}] " if outcome.worker else "",
                        outcome.task.id, message, extra=fields(outcome))
        return [failed], written

    def _report(self, batch: list[Outcome], written: set[tuple[int, int]]) -> None:
        info = log.isEnabledFor(logging.INFO)
        for o in batch:
            task = o.task
            self.dispatch.settle(task)
            self._unwritten -= 1
            if task.hold not in written:
                self._lease_lost += 1
                log.warning("[Worker %d] Task ID: %d lease lost, result discarded",
                            o.worker, task.id, extra=fields(o))
                continue
            self._written[o.kind] += 1
            if not info:
                continue
            if o.kind in (DONE, ERROR):
                log.info("[Worker %d] Task ID: %d processed with status: %s",
                         o.worker, task.id, o.kind, extra=fields(o))
            elif o.kind == RETRY:
                log.info("[Worker %d] Task ID: %d failed on attempt %d, retrying in %.1fs: %s",
                         o.worker, task.id, task.attempt, o.delay or 0, o.error,
                         extra=fields(o))
            elif o.kind == GIVE_BACK and o.worker:
                log.info("[Worker %d] Task ID: %d given back to pending",
                         o.worker, task.id, extra=fields(o))
            elif o.kind == REFUSE:
                log.info("Task ID: %d processed with status: error", task.id,
                         extra=fields(o))
            elif o.kind == CANCEL:
                log.info("[Worker %d] Task ID: %d processed with status: cancelled",
                         o.worker, task.id, extra=fields(o))
            elif o.kind == SNOOZE:
                log.info("[Worker %d] Task ID: %d snoozed for %.1fs", o.worker, task.id,
                         o.delay or 0, extra=fields(o))
