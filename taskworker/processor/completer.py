"""The outcomes waiting to be written: a buffer between the workers and the
exchange, with back-pressure, and the lines that report each outcome once the
table holds it.

Workers hand their outcomes here (`put`) instead of writing them themselves: the
exchange (exchange.py) takes them in batches (`take`, `gather`), at most
BATCH_MAX outcomes and BATCH_BYTES of results (one large result goes alone),
and sends each batch in one statement, alone or with a claim. Once a statement's
answer says which outcomes are in the table, `report` logs them (`processed
with status: done`) and settles their tasks; the others were fenced off (another
process took the task over) and are reported as a lease lost. An outcome that
was never sent (the database stayed away past shutdown's grace) stays counted in
`unwritten`.

While more than a few batches wait (`backlogged`), the exchange claims nothing
more: memory and held leases stay bounded when the database is slow or away.
"""
from __future__ import annotations

import logging

from gevent.queue import Queue

from ..logs import log
from ..settings import Settings
from ..store.completion import Written
from .dispatch import Dispatch
from .outcomes import CANCEL, DONE, ERROR, GIVE_BACK, KINDS, REFUSE, RETRY, SNOOZE, Outcome, fields

BATCH_MAX = 1000  # outcomes in one statement
BATCH_BYTES = 4 * 1024 * 1024  # bytes of results in one statement (at least one outcome)
# Outcomes waiting to be written beyond which claiming pauses (backlogged): a few
# batches, as a busy process has two statements on the wire (each with up to a
# claim of AUTO_LIMIT) while the next gathers; and at least two rounds of the
# workers, as ten thousand tasks started together also end together.
BACKLOG_BATCHES = 4
BACKLOG_ROUNDS = 2


class Completer:
    def __init__(self, settings: Settings, dispatch: Dispatch, frees_slots: bool = True) -> None:
        self._backlog_max = max(BACKLOG_BATCHES * BATCH_MAX,
                                BACKLOG_ROUNDS * settings.worker_count)
        self.frees_slots = frees_slots  # runs a task with a concurrency limit (max_running)
        self.dispatch = dispatch
        self._outcomes: Queue = Queue()  # None: stop() was asked
        self._carried: Outcome | None = None  # taken from the queue, left for the next batch
        self._stopping = False  # stop() was asked and its marker taken
        self._unwritten = 0  # outcomes handed over and not yet written (or fenced off)
        self._written = dict.fromkeys(KINDS, 0)  # outcomes written, by kind
        self._lease_lost = 0  # outcomes fenced off: another process took the task over

    def put(self, outcome: Outcome) -> None:
        self._unwritten += 1
        self._outcomes.put(outcome)

    def written_apart(self, outcome: Outcome) -> None:
        """An outcome its task's bound transaction wrote (or found fenced off):
        reported and settled as the statements' answers are."""
        self._unwritten += 1
        self.report([outcome], outcome.written or {})

    def stop(self) -> None:
        """No more outcomes will come: the writing lane writes what is queued, then ends."""
        self._outcomes.put(None)

    def take(self) -> list[Outcome]:
        """The outcomes waiting now (at most a batch), for a claim to carry; none
        while the process holds concurrency slots (claims do not free them)."""
        return [] if self.frees_slots else self._batch(wait=False, taking=True)

    def gather(self) -> list[Outcome] | None:
        """The next batch, waiting for one outcome if none is queued; None once
        stop() was asked and every outcome before it was taken."""
        while True:
            if self._stopping and self._carried is None and self._outcomes.empty():
                return None
            batch = self._batch(wait=not self._stopping)
            if batch:
                return batch

    def _batch(self, wait: bool, taking: bool = False) -> list[Outcome]:
        """Up to a batch from the queue (`wait`: for the first one). `taking`:
        for a claim (see take), which leaves stop()'s marker to the writing lane."""
        batch: list[Outcome] = []
        size = 0
        while len(batch) < BATCH_MAX:
            if self._carried is not None:
                item, self._carried = self._carried, None
            elif batch or not wait:
                if self._outcomes.empty():
                    break
                item = self._outcomes.get_nowait()
            else:
                item = self._outcomes.get()
            if item is None and taking:
                self._outcomes.put(None)
                break
            if item is None:
                self._stopping = True
                if batch:
                    break
                wait = False
                continue
            if batch and size + item.size > BATCH_BYTES:
                self._carried = item  # (a large result goes in a batch of its own)
                break
            batch.append(item)
            size += item.size
        return batch

    def requeue(self, batch: list[Outcome]) -> None:
        """Outcomes taken whose statement did not answer (shutdown stopped the
        claim carrying them): written again with a later batch, whose answer says
        which of them the first send wrote."""
        for outcome in batch:
            self._outcomes.put(outcome)

    def unwritten(self) -> int:
        return self._unwritten

    def backlogged(self) -> bool:
        """Outcomes pile up unwritten (the database is slow or away): claim nothing
        more until they are written."""
        return self._unwritten >= self._backlog_max

    def stats(self) -> dict[str, int]:
        w = self._written
        return {"done": w[DONE], "error": w[ERROR], "retried": w[RETRY],
                "given_back": w[GIVE_BACK], "cancelled": w[CANCEL], "snoozed": w[SNOOZE],
                "lease_lost": self._lease_lost,
                "unwritten": self._unwritten}

    def report(self, batch: list[Outcome], written: Written) -> None:
        """A statement's answer: the holds in `written` have their outcome in the
        table, the others were fenced off. Each is logged and its task settled."""
        info = log.isEnabledFor(logging.INFO)
        for o in batch:
            task = o.task
            self.dispatch.settle(task)
            self._unwritten -= 1
            how = written.get(task.hold)
            if how is None:
                self._lease_lost += 1
                log.warning("[Worker %d] Task ID: %d lease lost, result discarded",
                            o.worker, task.id, extra=fields(o))
                continue
            if how == "before":
                log.info("Task ID: %d outcome was written before the connection was lost",
                         task.id, extra=fields(o))
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
