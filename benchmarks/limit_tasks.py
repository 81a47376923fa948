"""The tasks of benchmarks.limits: a rate-limited no-op that notes each start's
time (its handler's own clock) in a file, and a keyed task."""
from __future__ import annotations

import os
import time

import taskworker

STARTS = os.environ.get("BENCH_STARTS_FILE", "")


@taskworker.task("bench_rated", rate_limit=os.environ.get("BENCH_RATE_LIMIT", "100/s"))
def rated(payload: str) -> None:
    if STARTS:
        fd = os.open(STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{time.time()}\n".encode())
        finally:
            os.close(fd)


@taskworker.task("bench_keyed", max_running_per_key=1)
def keyed(key: str, seconds: float) -> None:
    if seconds:
        time.sleep(seconds)
