"""The producer of the under-load phase, as a process of its own (so its timing
does not share an interpreter with the probe's): inserts `batch` pending tasks
per commit, `rate` tasks a second on a fixed schedule, for `seconds`; prints
the rate it achieved.

    python -m benchmarks.feeder URL RATE BATCH SECONDS [PAYLOAD]
"""
from __future__ import annotations

import sys
import time

import psycopg2

INSERT = "INSERT INTO tasks (payload) SELECT %s FROM generate_series(1, %s)"


def feed(url: str, rate: float, batch: int, seconds: float, payload: str) -> float:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    commits = int(rate * seconds / batch)
    with conn.cursor() as cur:
        start = time.monotonic()
        for i in range(commits):
            delay = start + i * batch / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cur.execute(INSERT, (payload, batch))
        achieved = commits * batch / (time.monotonic() - start)
    conn.close()
    return achieved


if __name__ == "__main__":
    url, rate, batch, seconds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), \
        float(sys.argv[4])
    print(f"{feed(url, rate, batch, seconds, sys.argv[5] if len(sys.argv) > 5 else 'load'):.1f}",
          flush=True)
