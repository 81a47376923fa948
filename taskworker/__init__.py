"""taskworker: a PostgreSQL-backed task processor on gevent.

This module imports nothing that opens sockets, so that `taskworker.cooperative` can
monkey-patch before anything else is imported. `enqueue`, `enqueue_many`,
`enqueue_unique` and their `_async` forms are loaded on first use, as are `task`
(registering a named task), the exceptions a handler raises to choose its
task's ending (`Fail`, `Snooze`, `Cancel`), `current_task`, the results API
(`result`, `wait`, their `_async` forms and their exceptions), workflows (`chain`, `group`,
`cancel_workflow`), `testing` (the eager mode for application tests) and
`hooks` (code run around tasks in serve).
"""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ loads them on first use
    from . import hooks, testing
    from .client import (
        enqueue,
        enqueue_async,
        enqueue_many,
        enqueue_many_async,
        enqueue_unique,
        enqueue_unique_async,
    )
    from .endings import Cancel, Fail, Snooze
    from .handlers import TaskContext, current_task, transaction
    from .registry import Task, task
    from .results import (
        NotFinished,
        TaskFailed,
        UnknownTask,
        WaitTimeout,
        result,
        result_async,
        wait,
        wait_async,
    )
    from .workflows import Chain, Group, Signature, Workflow, cancel_workflow, chain, group

__version__ = "0.1.0"
__all__ = ["Cancel", "Chain", "Fail", "Group", "NotFinished", "Signature", "Snooze", "Task",
           "TaskContext", "TaskFailed", "UnknownTask", "WaitTimeout", "Workflow", "__version__",
           "cancel_workflow", "chain", "current_task", "enqueue", "enqueue_async",
           "enqueue_many", "enqueue_many_async", "enqueue_unique", "enqueue_unique_async",
           "group", "hooks", "result", "result_async", "task", "testing", "transaction",
           "wait", "wait_async"]


def __getattr__(name: str) -> Any:
    """The attribute `name`, loaded on first use and kept in this module's
    namespace: later lookups (`taskworker.enqueue(...)` per task) find it there
    without coming back here (an import statement per call cost an enqueue a
    tenth of its own time)."""
    value = _load(name)
    globals()[name] = value
    return value


def _load(name: str) -> Any:
    if name in ("enqueue", "enqueue_many", "enqueue_unique", "enqueue_async",
                "enqueue_many_async", "enqueue_unique_async"):
        from . import client as module

        return getattr(module, name)
    if name == "task":
        from .registry import task

        return task
    if name in ("Fail", "Snooze", "Cancel"):
        from . import endings

        return getattr(endings, name)
    if name in ("result", "wait", "result_async", "wait_async", "TaskFailed", "NotFinished",
                "UnknownTask", "WaitTimeout"):
        from . import results

        return getattr(results, name)
    if name in ("current_task", "TaskContext", "transaction"):
        from . import handlers

        return getattr(handlers, name)
    if name in ("chain", "group", "cancel_workflow", "Chain", "Group", "Signature", "Workflow"):
        from . import workflows

        return getattr(workflows, name)
    if name == "Task":
        from .registry import Task

        return Task
    if name in ("testing", "hooks"):  # (submodules: `from . import x` would come back here)
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'taskworker' has no attribute {name!r}")
