"""Hooks: an application's code run around its tasks in `serve`, so that Sentry,
a metric or a log context plugs in without forking taskworker (what dramatiq's
middleware and Celery's signals are for).

    from taskworker import hooks

    @hooks.task_started
    def started(task):                   # a TaskContext: id, name, queue, attempt...
        ...
    @hooks.task_succeeded
    def succeeded(task, result):         # the value taskworker.result() will read
        ...
    @hooks.task_failed
    def failed(task, error):             # ended in error, for good: the exception
        sentry_sdk.capture_exception(error)
    @hooks.task_retrying
    def retrying(task, error, delay):    # failed, runs again after `delay` seconds
        ...
    @hooks.process_started
    def started_process():               # before the first task is claimed
        ...
    @hooks.process_stopped
    def stopped_process():               # every task finished and its outcome written
        ...

Hooks are registered at import, as tasks are: in a module of TASK_MODULES (or
the TASK_HANDLER's). Each decorator returns the function unchanged; several
hooks of one kind run in the order they were registered.

When they run. A task's hooks run in the worker greenlet that runs it: the start
hook just before the handler is called (taskworker.current_task() works there),
then one outcome hook once the handler has ended, after the task's timeout and
before its outcome is written (the completer writes outcomes in batches, a few
milliseconds later: a process killed in between runs the task again, as ever).
A task whose handler used taskworker.transaction() has its outcome committed
with that transaction when the handler returns: its outcome hook runs after.
Each task runs in a context of its own (contextvars): a variable its start hook
sets is seen by its handler and its outcome hook, and by no other task. A run
that ends otherwise (cancelled, snoozed, given back at shutdown or for a lease
it could not keep) calls no outcome hook. Hooks run in serve only, not in the
eager test mode.

A hook that raises is logged (`Hook module.fn (task_failed) raised ...`, with
its traceback) and the rest goes on as if it had returned: the task runs, and
its outcome is the one the handler made. A hook is plain code in a greenlet:
`async def` is refused at registration, and a hook that blocks holds its worker
(or, for a process hook, the start or the end of serve) as long as it blocks.

This module imports neither gevent nor the database driver.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from .handlers import TaskContext, coroutine_refusal
from .logs import log

TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED, TASK_RETRYING = (
    "task_started", "task_succeeded", "task_failed", "task_retrying")
PROCESS_STARTED, PROCESS_STOPPED = "process_started", "process_stopped"
TASK_EVENTS = (TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED, TASK_RETRYING)

_hooks: dict[str, list[Callable[..., Any]]] = {
    event: [] for event in (*TASK_EVENTS, PROCESS_STARTED, PROCESS_STOPPED)}

Started = TypeVar("Started", bound=Callable[[TaskContext], object])
Succeeded = TypeVar("Succeeded", bound=Callable[[TaskContext, Any], object])
Failed = TypeVar("Failed", bound=Callable[[TaskContext, BaseException], object])
Retrying = TypeVar("Retrying", bound=Callable[[TaskContext, BaseException, float], object])
OfProcess = TypeVar("OfProcess", bound=Callable[[], object])


class HookError(Exception):
    """A hook cannot be registered; str() is one line."""


class TaskError(Exception):
    """What a failure hook gets for a failure that raised no exception of the
    handler's (a return value that cannot be stored, a bound transaction that
    could not commit): its message is the task's stored error."""


def _add(event: str, fn: Callable[..., Any]) -> None:
    if not callable(fn):
        raise HookError(f"hooks.{event} takes a function, not {type(fn).__name__}")
    if (why := coroutine_refusal(fn)) is not None:
        raise HookError(f"hook {_name(fn)} {why}")
    if fn not in _hooks[event]:  # (a module imported twice registers once)
        _hooks[event].append(fn)


def task_started(fn: Started) -> Started:
    """Register `fn(task)`, called just before each task's handler."""
    _add(TASK_STARTED, fn)
    return fn


def task_succeeded(fn: Succeeded) -> Succeeded:
    """Register `fn(task, result)`, called when a task's handler returned:
    `result` is what taskworker.result() reads (a call's return value, decoded
    from its JSON; a text payload task's text)."""
    _add(TASK_SUCCEEDED, fn)
    return fn


def task_failed(fn: Failed) -> Failed:
    """Register `fn(task, error)`, called when a task ends in error: no retry
    left, Fail raised, a timeout, a result that cannot be stored (TaskError)."""
    _add(TASK_FAILED, fn)
    return fn


def task_retrying(fn: Retrying) -> Retrying:
    """Register `fn(task, error, delay)`, called when a task failed and will run
    again after `delay` seconds (MAX_RETRIES, RETRY_BACKOFF)."""
    _add(TASK_RETRYING, fn)
    return fn


def process_started(fn: OfProcess) -> OfProcess:
    """Register `fn()`, called once serve is set up, before its first claim."""
    _add(PROCESS_STARTED, fn)
    return fn


def process_stopped(fn: OfProcess) -> OfProcess:
    """Register `fn()`, called at the end of serve's shutdown: the workers are
    done and every outcome is written (or given up on)."""
    _add(PROCESS_STOPPED, fn)
    return fn


def has_task_hooks() -> bool:
    """Is any task hook registered? (Without, the worker skips their work.)"""
    return any(_hooks[event] for event in TASK_EVENTS)


def call(event: str, *args: Any, task_id: int | None = None) -> None:
    """Call the hooks of `event`; log what one raises and go on."""
    for fn in _hooks[event]:
        try:
            fn(*args)
        except Exception as exc:
            if task_id is None:  # (a process hook's: the traceback as any error's)
                log.error("Hook %s (%s) raised %s: %s; ignored", _name(fn), event,
                          type(exc).__name__, exc, exc_info=exc)
                continue
            # A task's: its lines follow, marked with the task (logs.py).
            log.error("Hook %s (%s) raised %s: %s; ignored (task ID: %d)", _name(fn),
                      event, type(exc).__name__, exc, task_id, extra={
                          "task_id": task_id,
                          "traceback": "".join(traceback.format_exception(exc))})


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
