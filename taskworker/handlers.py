"""What a task does: the demo handler, loading the one TASK_HANDLER names, and
what a running task may ask about itself.

A handler of text payloads is any callable `handler(payload)` returning the
result text (or None). If it also accepts a `task` keyword, it is called as
`handler(payload, task=...)` with a `TaskContext` (id, attempt, worker number,
and the settings a handler may need: never the database URL or its password).
A task called with arguments (part 14) gets only its own arguments: a `task`
parameter of its own is the caller's; it reads its context with
`taskworker.current_task()`, which every running task may call. Raising any
exception fails the task; the stored error is `ExceptionType: message`, and the
traceback is stored beside it.
"""
from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from .settings import Settings

Handler = Callable[..., str | None]


@dataclass(frozen=True)
class HandlerSettings:
    """The part of the configuration a handler may read."""

    task_timeout: float  # seconds a run may take (0: no limit)
    max_retries: int  # failed runs retried before the task ends in error
    task_min_seconds: float  # the demo handler's shortest simulated work
    task_max_seconds: float  # ... its longest
    task_failure_rate: float  # ... and the share of tasks it fails

    @classmethod
    def from_settings(cls, s: Settings) -> HandlerSettings:
        return cls(s.task_timeout, s.max_retries, s.task_min_seconds, s.task_max_seconds,
                   s.task_failure_rate)


def _never() -> bool:
    return False


@dataclass(frozen=True)
class TaskContext:
    id: int
    attempt: int  # 1 on the first run, counting every claim that ran the task
    worker: int  # the worker greenlet's number, as in the log lines
    settings: HandlerSettings
    name: str | None = None  # the registered task's name (None: the default handler)
    queue: str = "default"
    _cancelled: Callable[[], bool] = field(default=_never, repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """Has `taskworker cancel` asked this task to stop? (The worker is also
        killed at the handler's next cooperative point; a handler in a long
        computation without one can check this and return or raise Cancel.)"""
        return self._cancelled()


class Running(Protocol):
    """What the code running a task (a worker, or the eager test mode) offers
    the task while it runs."""

    def context(self) -> TaskContext: ...  # built on first ask (most tasks never ask)

    def transaction(self) -> Any: ...  # the bound transaction's connection

    def rollback(self) -> None: ...  # undo the bound transaction (the handler raised)


# The task this greenlet runs. Each greenlet has its own context variables, so
# every worker sees its own task.
_running: ContextVar[Running | None] = ContextVar("taskworker_running", default=None)


def current_task() -> TaskContext | None:
    """The context of the task this code runs in (None outside a task): its id,
    attempt, worker, name, queue, settings and whether a cancel was asked."""
    running = _running.get()
    return None if running is None else running.context()


@contextmanager
def transaction() -> Iterator[Any]:
    """A psycopg2 connection in a transaction bound to the running task: its
    writes commit together with the task's outcome, at the handler's return, or
    not at all (see processor/bound.py). Leaving the block does not commit; an
    exception out of it rolls the transaction back. Asked twice in one run, it
    is the same transaction."""
    running = _running.get()
    if running is None:
        raise RuntimeError("taskworker.transaction() binds a transaction to the running "
                           "task: call it inside a task")
    conn = running.transaction()
    try:
        yield conn
    except BaseException:
        running.rollback()
        raise


def coroutine_refusal(fn: Callable[..., Any]) -> str | None:
    """Why `fn` cannot be a handler or a task if it is a coroutine function (or
    an async generator, or an object whose __call__ is one); else None. Refused
    where it is declared (registration, TASK_HANDLER at serve's start), not
    found out task by task: a call would only make a coroutine that nothing
    awaits."""
    candidates = (fn, type(fn).__call__)  # (a class instance: its __call__)
    if not any(inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c)
               for c in candidates):
        return None
    return ("is an async def function, and taskworker's workers are gevent greenlets with "
            "no asyncio event loop to await it; write it as a plain def (under serve, "
            "sockets, time.sleep and psycopg2 are cooperative: a blocking call yields "
            "to the other tasks as an await would)")


class HandlerError(Exception):
    """TASK_HANDLER cannot be used; str() is one line for the user."""


class SimulatedFailure(Exception):
    """The demo handler's random failure (TASK_FAILURE_RATE)."""


def demo(payload: str | None, task: TaskContext) -> str:
    """The original's work: sleep 1-4 s, reverse the payload, fail 1 in 10.

    The payload is reversed by code point, so non-ASCII text stays valid text.
    The sleep and failure rate come from TASK_MIN_SECONDS, TASK_MAX_SECONDS and
    TASK_FAILURE_RATE, so tests and benchmarks can run it with no sleep.
    """
    import gevent  # (here: an application importing current_task() need not load gevent)

    s = task.settings
    if s.task_max_seconds > 0:
        gevent.sleep(random.uniform(s.task_min_seconds, s.task_max_seconds))
    if payload is None:
        raise ValueError("payload is NULL")
    if s.task_failure_rate and random.random() < s.task_failure_rate:
        raise SimulatedFailure("random failure")
    return payload[::-1]


def load(path: str) -> tuple[Handler, bool]:
    """Import `package.module:function`; return it and whether it takes `task=`."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # ImportError, AttributeError, or the module's own error
        raise HandlerError(f"cannot load TASK_HANDLER={path!r}: "
                           f"{type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise HandlerError(f"cannot load TASK_HANDLER={path!r}: not callable")
    if (why := coroutine_refusal(obj)) is not None:
        raise HandlerError(f"cannot use TASK_HANDLER={path!r}: it {why}")
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return obj, False
    takes_task = "task" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return obj, takes_task
