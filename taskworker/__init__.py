"""taskworker: a PostgreSQL-backed task processor on gevent.

This module imports nothing that opens sockets, so that `taskworker.cooperative` can
monkey-patch before anything else is imported. `enqueue` and `enqueue_many`
are loaded on first use.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "enqueue", "enqueue_many"]


def __getattr__(name: str) -> Any:
    if name in ("enqueue", "enqueue_many"):
        from . import client as module

        return getattr(module, name)
    raise AttributeError(f"module 'taskworker' has no attribute {name!r}")
