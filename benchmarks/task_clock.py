"""How the rivals phase times every system the same way: each task, whatever runs
it, appends its own start and end (time.time(), one 16-byte record) to a file of
its process in BENCH_CLOCK_DIR, with one os.write.

Why a file and not the systems' own timestamps: Celery writes nothing per task
without a result backend, and the others stamp different moments (taskworker and
pgqueuer at the batched completion, procrastinate per job); a task's own start and
end mean the same in each. Why not a Redis list or a table: a network round trip
per task would add work (and a second server's CPU) to the very thing measured,
more for the fast systems than the slow. An append to the page cache costs a few
microseconds, does not wait on anything, and is the same call in a gevent
greenlet and in an asyncio task. The records are fixed-size, so the harness
counts the finished tasks from the files' sizes while the run goes on.

The task bodies live with each system (iobound.py, celery_app.py,
procrastinate_app.py, pgqueuer_worker.py): start = time.time(), a cooperative
sleep of BENCH_SLEEP seconds, record(start).
"""
from __future__ import annotations

import os
import struct
import time

RECORD = struct.Struct("<dd")
DIR_VAR = "BENCH_CLOCK_DIR"
SLEEP = float(os.environ.get("BENCH_SLEEP", "0.05"))

_fd: int | None = None


def record(start: float) -> None:
    """Append (start, now) for one task; a no-op outside the benchmark."""
    global _fd
    if _fd is None:
        where = os.environ.get(DIR_VAR)
        if not where:
            return
        _fd = os.open(os.path.join(where, f"{os.getpid()}.times"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, RECORD.pack(start, time.time()))


def _files(where: str) -> list[str]:
    try:
        return [os.path.join(where, f) for f in os.listdir(where) if f.endswith(".times")]
    except FileNotFoundError:
        return []


def count(where: str) -> int:
    """Tasks finished so far (from the files' sizes: no reading)."""
    total = 0
    for path in _files(where):
        try:
            total += os.stat(path).st_size // RECORD.size
        except FileNotFoundError:
            pass
    return total


def read(where: str) -> list[tuple[float, float]]:
    """Every (start, end) recorded in `where` (whole records only)."""
    out: list[tuple[float, float]] = []
    for path in _files(where):
        with open(path, "rb") as f:
            data = f.read()
        usable = len(data) - len(data) % RECORD.size
        out.extend(RECORD.iter_unpack(data[:usable]))
    return out
