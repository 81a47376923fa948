"""What became of one run of a task, and the rules that decide it.

Every failure rule lives here: whether a failed run is retried and after what
backoff (`RetryPolicy`), and what each kind of outcome writes to the row
(`Outcome.write`). The worker decides the kind; the completer only writes it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..settings import Settings
from ..store.completion import OutcomeWrite, Written
from ..store.tasks import ClaimedTask

DONE = "done"  # the handler returned: status done, with its result
ERROR = "error"  # failed for good: status error
RETRY = "retry"  # failed, retries remain: back to pending after a backoff
GIVE_BACK = "give back"  # not run to the end (shutdown): back to pending untouched
REFUSE = "refuse"  # not run at all, its payload is over MAX_PAYLOAD_BYTES: error, unrun
SNOOZE = "snooze"  # the handler raised Snooze: back to pending after a delay, uncounted
CANCEL = "cancel"  # cancelled (taskworker cancel, or the handler raised Cancel)
KINDS = (DONE, ERROR, RETRY, GIVE_BACK, REFUSE, SNOOZE, CANCEL)

RETRY_CAP = 3600.0  # longest retry backoff, seconds


@dataclass(eq=False)
class Outcome:
    task: ClaimedTask
    worker: int  # 0: not run by a worker (given back from the local queue)
    kind: str  # one of KINDS
    result: str | None = None  # text (format 1), or the return value as JSON (format 2)
    error: str | None = None
    delay: float | None = None  # RETRY: seconds until the task is due again
    size: int = 0  # bytes of the result, for the completer's batches
    frees_slot: bool = False  # the task held a max_running slot
    traceback: str | None = None  # of the failure `error` describes
    # Written by the task's bound transaction (part 21): the holds it wrote
    # (empty: fenced off); None: the completer writes it.
    written: Written | None = None
    # The failure's exception, for the hooks only (hooks.py); dropped before the
    # outcome is handed over, so that no queue keeps the handler's frames alive.
    exception: BaseException | None = None
    trace: dict[str, str] | None = None  # its span's trace_id and span_id (tracing.py)

    def write(self) -> OutcomeWrite:
        """The row update this outcome makes.

        A given-back task does not count the attempt its claim counted: a Ctrl+C
        never uses up a task's retries; nor does a refused one, which never ran.
        A retry keeps the count, which is how the retry budget is spent."""
        status = {DONE: "done", ERROR: "error", RETRY: "pending", GIVE_BACK: "pending",
                  REFUSE: "error", SNOOZE: "pending", CANCEL: "cancelled"}
        return OutcomeWrite(self.task.id, self.task.fence, status[self.kind], self.result,
                            self.error, self.delay, self.kind in (GIVE_BACK, REFUSE, SNOOZE),
                            self.task.losses, self.traceback)

    @property
    def wakes_others(self) -> bool:
        """Once written, a task is claimable again at once, or a concurrency
        slot is free for another task of its name, or its key has room for
        another of its tasks (the other processes' keyed claims wait for news)."""
        return (self.kind == GIVE_BACK or (self.kind in (RETRY, SNOOZE) and not self.delay)
                or self.frees_slot or self.task.keyed)


def fields(o: Outcome) -> dict[str, object]:
    """An outcome's fields for the log (LOG_FORMAT=json)."""
    fields: dict[str, object] = {"task_id": o.task.id, "worker": o.worker or None,
                                 "attempt": o.task.attempt}
    if o.trace is not None:
        fields.update(o.trace)
    return fields


@dataclass(frozen=True)
class RetryPolicy:
    """MAX_RETRIES and RETRY_BACKOFF: a failed run is retried while the task has
    failed at most `max_retries` times, after `backoff × 2^(failures-1)` seconds
    (capped at an hour) with ±20% jitter so that tasks failing together do not
    come back together.

    Runs lost to a dead worker (rescues) are not failures: they do not use up
    the retry budget (MAX_RESCUES bounds them instead)."""

    max_retries: int
    backoff: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_retries, settings.retry_backoff)

    def after_failure(self, task: ClaimedTask, worker: int, message: str) -> Outcome:
        failures = task.attempt - task.rescues  # runs that ended in a failure, this one too
        if failures <= self.max_retries:
            base = self.backoff * 2 ** (failures - 1)
            delay = min(base, RETRY_CAP) * random.uniform(0.8, 1.2)
            return Outcome(task, worker, RETRY, error=message, delay=delay, size=len(message))
        return Outcome(task, worker, ERROR, error=message, size=len(message))
