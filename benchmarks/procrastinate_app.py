"""procrastinate as the rivals phase drives it (the only module that imports it),
psycopg 3 connector, everything at its defaults but the worker's concurrency:

    python -m benchmarks.procrastinate_app install
    python -m benchmarks.procrastinate_app enqueue COUNT
    python -m benchmarks.procrastinate_app worker CONCURRENCY   # until SIGINT/SIGTERM

The database is BENCH_DSN's (a postgresql:// URL), read at import, as a user's app
module would read its own setting.

`worker` is what `procrastinate worker --concurrency C` runs (App.run_worker_async,
its own signal handlers: SIGINT/SIGTERM stop it gracefully).
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

import procrastinate

from . import task_clock

ENQUEUE_CHUNK = 5000

if __name__ == "__main__":
    # Through the package's name: the app and its task must not live in __main__.
    from benchmarks import procrastinate_app

    asyncio.run(procrastinate_app.main(sys.argv[1], sys.argv[2:]))
    sys.exit(0)

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get("BENCH_DSN", "")))


@app.task(name="twbench_sleep")
async def sleep(payload: str) -> str:
    start = time.time()
    await asyncio.sleep(task_clock.SLEEP)
    task_clock.record(start)
    return payload


async def main(command: str, rest: list[str]) -> None:
    async with app.open_async():
        if command == "install":
            await app.schema_manager.apply_schema_async()
        elif command == "enqueue":
            count = int(rest[0])
            for start in range(0, count, ENQUEUE_CHUNK):
                size = min(ENQUEUE_CHUNK, count - start)
                await sleep.batch_defer_async(
                    *({"payload": f"task {start + i + 1}"} for i in range(size)))
        elif command == "worker":
            await app.run_worker_async(concurrency=int(rest[0]))
        else:
            raise SystemExit(f"unknown command {command!r}")


