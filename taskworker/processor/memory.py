"""Releasing memory to the system after a large task.

Two things keep memory after a task whose payload or result was large. libpq
keeps each connection's buffers as large as the largest message they carried
(measured: 60 MB payloads left an idle process at 164 MB instead of 40 MB), so
the connection that carried it is closed and opened again. And glibc's malloc
keeps freed pages of its heaps for reuse: `malloc_trim(0)` returns them. Both
cost a few milliseconds, so they happen only after LARGE bytes or more.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

LARGE = 1024 * 1024  # bytes of payloads and results after which memory is released

_malloc_trim: Callable[[int], int] | None
try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to do
    _malloc_trim = None


def release() -> None:
    """Return freed heap memory to the system (glibc); elsewhere, nothing."""
    if _malloc_trim is not None:
        _malloc_trim(0)
