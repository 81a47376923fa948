"""One worker greenlet: take a task, run the handler on it, hand the outcome to
the completer, and again.

Workers hold no connection: they only run the handler. The outcome is written
later, in a batch, by the completer, which logs `processed with status` once the
row really says so; the worker logs when it starts and when it has finished, so
one worker's lines read in order.
"""
from __future__ import annotations

import contextvars
import logging
import time
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import gevent
from gevent.event import Event

from .. import hooks
from ..codec import decode
from ..endings import Cancel, Fail, Snooze
from ..handlers import HandlerSettings, TaskContext, _running
from ..logs import log, printable, seconds
from ..registry import call
from ..settings import Settings
from ..store.tasks import ClaimedTask
from ..tracing import consumer
from .bound import Bound, TransactionPool
from .catalog import Catalog, Job
from .dispatch import Dispatch
from .heartbeat import LeaseExpiring
from .outcomes import CANCEL, DONE, ERROR, GIVE_BACK, RETRY, SNOOZE, Outcome

MAX_TRACEBACK_CHARS = 16_000  # a stored traceback's length at most


class TaskTimeout(Exception):
    pass


class TaskRun:
    """One run of a task, as the task sees it while it runs (handlers.Running):
    its context, built on first ask, and its bound transaction, taken from the
    pool on first ask (part 21)."""

    __slots__ = ("worker", "task", "n", "bound")

    def __init__(self, worker: Worker, task: ClaimedTask, n: int) -> None:
        self.worker = worker
        self.task = task
        self.n = n
        self.bound: Bound | None = None

    def context(self) -> TaskContext:
        task, dispatch = self.task, self.worker.dispatch
        return TaskContext(task.id, task.attempt, self.n,
                           self.worker.handler_settings[task.name], task.name, task.queue,
                           lambda: dispatch.is_cancelled(task.id))

    def transaction(self) -> Any:
        if self.bound is None:
            self.bound = Bound(self.worker.transactions)
        return self.bound.connection()

    def rollback(self) -> None:
        if self.bound is not None:
            self.bound.rollback()


class Worker:
    """What every worker greenlet shares: what runs each task (the catalog) and
    how to judge its run."""

    def __init__(self, settings: Settings, catalog: Catalog,
                 dispatch: Dispatch, outcome: Callable[[Outcome], None],
                 cancelling: Callable[[], bool],
                 observe: Callable[[float], None] = lambda seconds: None,
                 started: Callable[[ClaimedTask], Event | None] = lambda task: None,
                 holder: str = "", written_apart: Callable[[Outcome], None] | None = None,
                 frees_slots: bool = False) -> None:
        self.catalog = catalog
        base = HandlerSettings.from_settings(settings)
        self.handler_settings = {  # what a handler sees: its task's own options
            name: replace(base, task_timeout=job.timeout, max_retries=job.retries.max_retries)
            for name, job in catalog.jobs.items()}
        self.max_bytes = settings.max_payload_bytes
        self.lease_margin = settings.lease_seconds / 3  # as the lease guard's
        self.dispatch = dispatch
        self.outcome = outcome  # hands an outcome to the completer
        self.started = started  # tells the heartbeat a handler starts (tasks.started_at)
        self.cancelling = cancelling  # shutdown is killing the workers now
        self.observe = observe  # told each run's duration (metrics)
        # Bound transactions (part 21): their pool, and what reports an outcome
        # their commit wrote.
        self.holder = holder
        self.frees_slots = frees_slots
        self.transactions = TransactionPool(settings, settings.transaction_pool_size)
        self.written_apart = written_apart or outcome
        self.hooked = hooks.has_task_hooks()  # (registered by the modules serve imported)
        # Each task in a CONSUMER span, with OpenTelemetry installed (tracing.py);
        # None without it: nothing more per task.
        self.tracing = consumer()

    def loop(self, n: int) -> None:
        """Worker number `n`: run tasks until the dispatch says stop."""
        task: ClaimedTask | None
        outcome: Outcome | None
        scope: contextvars.Context | None
        while True:
            # An idle worker keeps no payload or result alive: not of the task it
            # ran, nor of one it skipped or gave back unstarted (`continue`), which
            # it kept until its next task, for ever in an idle process.
            task = outcome = scope = None
            try:
                task = self.dispatch.take()
            except (gevent.GreenletExit, LeaseExpiring):
                if self.cancelling():
                    raise
                # A stop (taskworker cancel, the lease guard) thrown at this worker
                # by a hub callback that ran after its task had already ended: it
                # was meant for that task, not for the worker.
                continue
            if task is None:
                log.info("[Worker %d] Received shutdown signal", n)
                return
            if self.dispatch.is_lost(task):
                self.dispatch.settle(task)
                log.warning("[Worker %d] Task ID: %d lease lost before it started, skipped",
                            n, task.id)
                continue
            if self.dispatch.lease_ending(task, self.lease_margin):
                log.warning("[Worker %d] Task ID: %d not started: its lease would run out "
                            "unrenewed; giving it back", n, task.id, extra=_fields(task, n))
                self.outcome(Outcome(task, n, GIVE_BACK))
                continue
            self.dispatch.started(n, task)
            started = time.monotonic()
            scope = contextvars.copy_context() if self.hooked else None  # (hooks.py)
            try:
                outcome = self.run(task, n) if scope is None else scope.run(self.run, task, n)
            except LeaseExpiring:  # the lease guard stopped it: give it back untouched
                outcome = Outcome(task, n, GIVE_BACK)
            except gevent.GreenletExit as exc:
                if self.dispatch.is_cancelled(task.id) and not self.cancelling():
                    outcome = self._cancelled(task, n, "a cancel was asked", asked=True)
                elif not self.cancelling():  # raised by the handler itself, not by shutdown
                    outcome = self._crashed(task, n, exc)
                else:
                    self.outcome(Outcome(task, n, GIVE_BACK))
                    log.info("[Worker %d] Task ID: %d cancelled by shutdown", n, task.id)
                    log.info("[Worker %d] Received shutdown signal", n)
                    raise
            except BaseException as exc:  # a bug outside the handler: keep the worker
                outcome = self._crashed(task, n, exc)
            finally:
                self.dispatch.finished(n)
            took = time.monotonic() - started
            self.observe(took)
            if log.isEnabledFor(logging.INFO):  # (the arguments cost on a hot path)
                fields = _fields(task, n)
                if outcome.trace is not None:  # (its span's ids: tracing.py)
                    fields.update(outcome.trace)
                log.info("[Worker %d] Finished task ID: %d in %s", n, task.id,
                         seconds(round(took, 3)), extra=fields)
            try:
                if scope is not None:
                    scope.run(self._outcome_hooks, task, n, outcome)
            finally:
                outcome.exception = None
                if outcome.written is not None:  # its bound transaction wrote it
                    self.written_apart(outcome)
                else:
                    self.outcome(outcome)

    def run(self, task: ClaimedTask, n: int) -> Outcome:
        """Run the task's function on it and say how it ended (in its span, when
        traced)."""
        if self.tracing is None:
            return self._run(task, n)
        return self.tracing.consume(task, n, self._run)

    def _run(self, task: ClaimedTask, n: int) -> Outcome:
        job = self.catalog.job(task.name)
        if job is None:  # (the claim takes only names this process knows)
            log.warning("[Worker %d] Task ID: %d names task %r, unknown here; giving it back",
                        n, task.id, task.name)
            return Outcome(task, n, GIVE_BACK)
        if self.dispatch.is_cancelled(task.id):
            return self._cancelled(task, n, "a cancel was asked before it started",
                                   asked=True)
        durable = self.started(task)
        if durable is not None:  # (lost unstarted before: its start is written first)
            durable.wait()
        if self.dispatch.too_late_to_start(task):  # (a rate limit's start guard: catalog.py)
            log.warning("[Worker %d] Task ID: %d not started: its rate limit's start window "
                        "passed while it waited; giving it back", n, task.id,
                        extra=_fields(task, n))
            return Outcome(task, n, GIVE_BACK)
        if log.isEnabledFor(logging.INFO):
            log.info("[Worker %d] Processing task ID: %d with payload: %s",
                     n, task.id, printable(task.payload), extra=_fields(task, n))
        run = TaskRun(self, task, n)
        running = _running.set(run)
        try:
            if self.hooked:
                hooks.call(hooks.TASK_STARTED, run.context(), task_id=task.id)
            outcome = self._handle(task, n, job, run)
            if run.bound is not None and run.bound.conn is not None and outcome.kind == DONE:
                outcome, outcome.written = run.bound.commit(  # (part 21)
                    outcome, self.holder, self.frees_slots,
                    lambda o, why: self._failed(o.task, n, job, why))
            return outcome
        finally:
            # Any other ending undoes the bound transaction, a kill midway included
            # (shutdown, cancel, the lease guard).
            if run.bound is not None:
                run.bound.rollback()
            _running.reset(running)

    def _handle(self, task: ClaimedTask, n: int, job: Job, run: TaskRun) -> Outcome:
        """Call the handler, within its timeout; how it ended."""
        timer = gevent.Timeout(job.timeout or None, TaskTimeout)
        timer.start()
        try:
            if task.format == 1:
                if job.takes_task:
                    result = job.fn(task.payload, task=run.context())
                else:
                    result = job.fn(task.payload)
                problem, size = _storable(result, self.max_bytes)
            else:
                result, problem = self._call(job, task)
                size = 0 if problem else len(result)
            if problem:
                return self._failed(task, n, job, problem, retry=False)
            return Outcome(task, n, DONE, result=result, size=size, frees_slot=job.limited)
        except TaskTimeout as exc:
            return self._failed(task, n, job, f"timed out after {seconds(job.timeout)}",
                                traceback=formatted(exc), exception=exc)
        except Fail as exc:
            return self._failed(task, n, job, f"{exc}" or "failed", retry=False,
                                traceback=formatted(exc), exception=exc)
        except Snooze as exc:
            return Outcome(task, n, SNOOZE, delay=exc.delay, frees_slot=job.limited)
        except Cancel as exc:
            return self._cancelled(task, n, f"{exc}" or "by its handler")
        except (Exception, SystemExit) as exc:
            return self._failed(task, n, job, f"{type(exc).__name__}: {exc}",
                                traceback=formatted(exc), exception=exc)
        finally:
            timer.close()

    def _call(self, job: Job, task: ClaimedTask) -> tuple[str, str | None]:
        """Call a format 2 task's function with the row's arguments (see
        registry.call)."""
        if not job.named:
            return "", ("TypeError: a task with arguments needs a registered function; "
                        "this row names none")
        return call(job.fn, job.signature, task.name, task.payload or "")

    def _cancelled(self, task: ClaimedTask, n: int, why: str, asked: bool = False) -> Outcome:
        """`asked`: by `taskworker cancel` or the dashboard; the stored error then
        names which (the row's cancel_requested_by: see outcomes_written)."""
        job = self.catalog.job(task.name)
        log.info("[Worker %d] Task ID: %d cancelled (%s)", n, task.id, why,
                 extra=_fields(task, n))
        error = None if asked else f"cancelled: {_bounded(why, self.max_bytes)}"
        return Outcome(task, n, CANCEL, error=error, frees_slot=job is not None and job.limited)

    def _failed(self, task: ClaimedTask, n: int, job: Job | None, message: str,
                retry: bool = True, traceback: str | None = None,
                exception: BaseException | None = None) -> Outcome:
        message = _bounded(message, self.max_bytes)
        limited = job is not None and job.limited
        if job is not None and retry:
            outcome = job.retries.after_failure(task, n, message)
        else:
            outcome = Outcome(task, n, ERROR, error=message, size=len(message))
        outcome.frees_slot = limited
        outcome.traceback = traceback
        outcome.size += len(traceback or "")
        if self.hooked:
            outcome.exception = exception
        # The line is the original tool's; the traceback follows it (see logs.py).
        if outcome.kind == ERROR:  # a warning: LOG_LEVEL=WARNING still shows every failure
            log.warning("[Worker %d] Task ID: %d failed: %s", n, task.id, message,
                        extra={**_fields(task, n), "traceback": traceback})
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("[Worker %d] Task ID: %d failed, to be retried: %s", n, task.id,
                      message, extra={**_fields(task, n), "traceback": traceback})
        return outcome

    def _crashed(self, task: ClaimedTask, n: int, exc: BaseException) -> Outcome:
        outcome = self._failed(task, n, self.catalog.job(task.name),
                               f"worker crashed: {type(exc).__name__}: {exc}",
                               traceback=formatted(exc), exception=exc)
        log.error("[Worker %d] crashed on task ID %d (%s: %s); worker restarted",
                  n, task.id, type(exc).__name__, exc, extra=_fields(task, n))
        return outcome

    # --- hooks (hooks.py): what the application runs around its tasks

    def _outcome_hooks(self, task: ClaimedTask, n: int, outcome: Outcome) -> None:
        """The hooks of how the run ended (in the task's own context), before
        the outcome is handed over. A stop thrown at this worker meanwhile was
        meant for the task, which has ended (as in `loop`): it stops the hooks,
        not the worker, unless shutdown is killing the workers."""
        if outcome.kind not in (DONE, ERROR, RETRY):
            return
        context = TaskRun(self, task, n).context()
        error = outcome.exception or hooks.TaskError(outcome.error or "failed")
        try:
            if outcome.kind == DONE:
                hooks.call(hooks.TASK_SUCCEEDED, context, _value(task, outcome),
                           task_id=task.id)
            elif outcome.kind == ERROR:
                hooks.call(hooks.TASK_FAILED, context, error, task_id=task.id)
            else:
                hooks.call(hooks.TASK_RETRYING, context, error, outcome.delay or 0.0,
                           task_id=task.id)
        except (gevent.GreenletExit, LeaseExpiring):
            if self.cancelling():
                raise


def _value(task: ClaimedTask, outcome: Outcome) -> Any:
    """A done task's result as taskworker.result() reads it (for the hooks)."""
    if task.format == 1 or outcome.result is None:
        return outcome.result
    return decode(outcome.result)


def _storable(result: object, max_bytes: int) -> tuple[str | None, int]:
    """(why the handler's return value cannot be stored as a result, or None; its
    size in bytes)."""
    if result is None:
        return None, 0
    if not isinstance(result, str):
        return f"TypeError: handler returned {type(result).__name__}, expected str or None", 0
    if "\x00" in result:
        return ("ValueError: result contains a NUL character, which PostgreSQL text cannot "
                "hold", 0)
    try:
        size = len(result.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"UnicodeEncodeError: result is not valid text ({exc.reason})", 0
    if size > max_bytes:
        return f"ValueError: result is {size} bytes, over MAX_PAYLOAD_BYTES={max_bytes}", 0
    return None, size


def formatted(exc: BaseException) -> str:
    """The traceback of a task's failure, from the task's own frames down (the
    worker's frames that called it are left out), within MAX_TRACEBACK_CHARS:
    its first lines and its last frames, where the failure is, are kept."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback_module.format_exception(type(exc), exc, tb))
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    head = text[:MAX_TRACEBACK_CHARS // 8].rsplit("\n", 1)[0]
    tail = text[len(text) - MAX_TRACEBACK_CHARS * 7 // 8:].split("\n", 1)[-1]
    return f"{head}\n  ... ({len(text) - len(head) - len(tail)} characters cut) ...\n{tail}"


def _bounded(message: str, max_bytes: int) -> str:
    """An error text cut so that it stays within MAX_PAYLOAD_BYTES (an exception
    may carry a whole payload in its message)."""
    if len(message) * 4 <= max_bytes or len(message.encode("utf-8")) <= max_bytes:
        return message
    keep = max(max_bytes // 4 - 40, 0)
    return f"{message[:keep]}... (cut: {len(message)} characters)"


def _fields(task: ClaimedTask, n: int) -> dict[str, object]:
    return {"task_id": task.id, "worker": n, "attempt": task.attempt}
