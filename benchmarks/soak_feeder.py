"""The soak's producer, as a process of its own: inserts `batch` calls of the
soak task per commit (one INSERT of `batch` rows, each with the same 1 KB JSON
arguments), `rate` tasks a second on a fixed schedule, until SIGTERM or SIGINT,
which end it between two commits (no insert is cut). It prints the number of
tasks it committed and the rate it achieved, on one line, as it exits.

    python -m benchmarks.soak_feeder URL RATE BATCH ARGUMENTS_JSON
"""
from __future__ import annotations

import signal
import sys
import time

import psycopg2

INSERT = ("INSERT INTO tasks (task, arguments, format) "
          "SELECT 'soak', %s::jsonb, 2 FROM generate_series(1, %s)")
_stop = False


def _ask_stop(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def feed(url: str, rate: float, batch: int, arguments: str) -> tuple[int, float]:
    """Insert until asked to stop: (tasks committed, tasks per second achieved)."""
    conn = psycopg2.connect(url, application_name="soak feeder")
    conn.autocommit = True
    done = 0
    start = time.monotonic()
    with conn.cursor() as cur:
        i = 0
        while not _stop:
            delay = start + i * batch / rate - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.2))
                continue
            cur.execute(INSERT, (arguments, batch))
            done += batch
            i += 1
    elapsed = time.monotonic() - start
    conn.close()
    return done, done / elapsed if elapsed > 0 else 0.0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _ask_stop)
    signal.signal(signal.SIGINT, _ask_stop)
    fed, achieved = feed(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    print(f"{fed} {achieved:.1f}", flush=True)
