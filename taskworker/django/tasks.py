"""Django tasks as taskworker tasks: each `@task` of a TaskworkerBackend is
registered in taskworker's registry under its module path
(`myapp.tasks.send_receipt`), the name its rows carry; the worker calls it
between two `close_old_connections()`.

Under gevent each worker greenlet has connections of its own (Django keeps them
per thread, and the patched threading is per greenlet): so at most one per
database per running task, WORKER_COUNT in all; and with CONN_MAX_AGE=0 (Django's
default) each is closed when its task ends, as a request's is when the request
ends. A greenlet a task spawns keeps its own: close them in it (or
`django.db.connections.close_all()` at its end).
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections
from django.utils import timezone

from .. import registry
from ..handlers import current_task
from .compat import module

WORKER_ID = "taskworker"  # what a TaskResult's worker_ids hold, one per attempt


def register(task: Any) -> None:
    """Register a Django task (once; `.using()` copies share it) as the
    taskworker task named by its module path. Its signature, without the
    `context` a task that takes context gets, is what enqueue checks calls
    against."""
    name = task.module_path
    known = registry.get(name)
    if known is not None and getattr(getattr(known.fn, "django_task", None), "func",
                                     None) is task.func:
        return
    registry.task(name)(closing(runner(task)))


def runner(task: Any) -> Callable[..., Any]:
    """What the worker calls for `task`: its function, given a TaskContext
    first when it takes one."""
    func = task.func

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        if task.takes_context:
            context = module().TaskContext(task_result=running(task, args, kwargs))
            return func(context, *args, **kwargs)
        return func(*args, **kwargs)

    if task.takes_context:
        signature = inspect.signature(func)
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:])
    run.django_task = task  # type: ignore[attr-defined]
    return run


def closing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` between two close_old_connections(), as Django runs a request: the
    connections a task leaves are closed (CONN_MAX_AGE=0) or checked (a longer
    CONN_MAX_AGE, for the next task of this worker) when it ends, whatever the
    end."""
    if getattr(fn, "closes_connections", False):
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    run.closes_connections = True  # type: ignore[attr-defined]
    return run


def running(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The TaskResult a running task's context holds."""
    current = current_task()
    now = timezone.now()
    attempt = current.attempt if current is not None else 1
    return module().TaskResult(
        task=task, id=str(current.id if current is not None else ""),
        status=module().TaskResultStatus.RUNNING, enqueued_at=None, started_at=now,
        finished_at=None, last_attempted_at=now, args=list(args), kwargs=dict(kwargs),
        backend=task.backend, errors=[], worker_ids=[WORKER_ID] * attempt)
