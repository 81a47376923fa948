"""taskworker: a PostgreSQL-backed task processor on gevent.

This module imports nothing that opens sockets, so that `taskworker.cooperative` can
monkey-patch before anything else is imported. `enqueue` and `enqueue_many`
are loaded on first use, as are `task` (registering a named task) and the
exceptions a handler raises to choose its task's ending: `Fail`, `Snooze`, `Cancel`.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["Cancel", "Fail", "Snooze", "__version__", "enqueue", "enqueue_many",
           "enqueue_unique", "task"]


def __getattr__(name: str) -> Any:
    if name in ("enqueue", "enqueue_many", "enqueue_unique"):
        from . import client as module

        return getattr(module, name)
    if name == "task":
        from .registry import task

        return task
    if name in ("Fail", "Snooze", "Cancel"):
        from . import endings

        return getattr(endings, name)
    raise AttributeError(f"module 'taskworker' has no attribute {name!r}")
