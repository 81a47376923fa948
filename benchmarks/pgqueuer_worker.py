"""The pgqueuer side, run as its own process (asyncpg driver, uvloop if present):

    python -m benchmarks.pgqueuer_worker install DSN
    python -m benchmarks.pgqueuer_worker enqueue DSN COUNT
    python -m benchmarks.pgqueuer_worker drain DSN BATCH   # until the queue is empty
    python -m benchmarks.pgqueuer_worker serve DSN BATCH   # until SIGINT/SIGTERM
    python -m benchmarks.pgqueuer_worker enqueue-sleep DSN COUNT
    python -m benchmarks.pgqueuer_worker sleep DSN CONCURRENCY   # until SIGINT/SIGTERM

`drain` and `serve` print one JSON line with the process's peak RSS at the end.
`sleep` is the rivals phase's consumer (benchmarks/task_clock.py): jobs of a
cooperative BENCH_SLEEP seconds, at most CONCURRENCY at once in this process
(max_concurrent_tasks), pgqueuer's default batch size otherwise.
The only module here that imports pgqueuer or asyncpg.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job
from pgqueuer.types import QueueExecutionMode

from . import task_clock

ENTRYPOINT = "noop"
SLEEP_ENTRYPOINT = "sleep"
ENQUEUE_CHUNK = 5000


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def enqueue(dsn: str, count: int, entrypoint: str = ENTRYPOINT) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        for start in range(0, count, ENQUEUE_CHUNK):
            size = min(ENQUEUE_CHUNK, count - start)
            await queries.enqueue([entrypoint] * size,
                                  [f"task {start + i + 1}".encode() for i in range(size)],
                                  [0] * size)
    finally:
        await conn.close()


async def consume(dsn: str, batch: int, mode: QueueExecutionMode) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, qm.shutdown.set)
        await qm.run(batch_size=batch, mode=mode)
    finally:
        await conn.close()
    print(json.dumps({"vm_hwm_kb": vm_hwm_kb()}), flush=True)


async def consume_sleep(dsn: str, concurrency: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(SLEEP_ENTRYPOINT)
        async def sleep(job: Job) -> None:
            start = time.time()
            await asyncio.sleep(task_clock.SLEEP)
            task_clock.record(start)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, qm.shutdown.set)
        await qm.run(max_concurrent_tasks=concurrency)
    finally:
        await conn.close()


def vm_hwm_kb() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main(argv: list[str]) -> None:
    command, dsn, *rest = argv
    if command == "install":
        coro = install(dsn)
    elif command == "enqueue":
        coro = enqueue(dsn, int(rest[0]))
    elif command == "enqueue-sleep":
        coro = enqueue(dsn, int(rest[0]), SLEEP_ENTRYPOINT)
    elif command == "sleep":
        coro = consume_sleep(dsn, int(rest[0]))
    elif command in ("drain", "serve"):
        mode = QueueExecutionMode.drain if command == "drain" else QueueExecutionMode.continuous
        coro = consume(dsn, int(rest[0]), mode)
    else:
        raise SystemExit(f"unknown command {command!r}")
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main(sys.argv[1:])
