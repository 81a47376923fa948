"""pgqueuer as the benchmark drives it: each step is a `benchmarks.pgqueuer_worker`
child process; timings come from pgqueuer's own log table (`created` of each
'successful' row, written by its batched completion statement).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

from psycopg2.extensions import connection

from . import latency
from .databases import connect, database_name
from .processes import BenchError, Proc, run
from .taskworker_runs import REPO, env_for

WORKER = [sys.executable, "-m", "benchmarks.pgqueuer_worker"]


def version() -> str | None:
    """pgqueuer's version, or None when it is not installed."""
    try:
        metadata.version("asyncpg")
        return metadata.version("pgqueuer")
    except metadata.PackageNotFoundError:
        return None


def _env() -> dict[str, str]:
    return env_for("")


def _step(args: list[str], timeout: float) -> str:
    code, out = run("pgqueuer", WORKER + args, _env(), cwd=str(REPO), timeout=timeout)
    if code != 0:
        raise BenchError(f"pgqueuer {args[0]} exited {code}: {out.strip()[-800:]}")
    return out


def install(db_url: str) -> None:
    _step(["install", db_url], 60)


@dataclass
class Drain:
    """One pgqueuer run: `n` jobs through one consumer process at `batch`."""
    n: int
    batch: int
    rate: float | None = None  # jobs/s from the first to the last completion
    span: float | None = None
    done: int = 0
    rss_kb: int | None = None
    notes: list[str] = field(default_factory=list)


WINDOW = """
WITH r AS (SELECT created FROM pgqueuer_log WHERE status = 'successful'),
     w AS (SELECT min(created) AS t0, max(created) AS t1 FROM r)
SELECT count(*), count(*) FILTER (WHERE r.created = w.t0), extract(epoch FROM w.t1 - w.t0)
FROM r, w
GROUP BY w.t0, w.t1
"""


def drain(db_url: str, n: int, batch: int) -> Drain:
    """Enqueue `n` jobs in bulk, then time one consumer until the queue is empty."""
    result = Drain(n, batch)
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE pgqueuer, pgqueuer_log")
        _step(["enqueue", db_url, str(n)], 120 + n / 1000)
        with conn.cursor() as cur:
            cur.execute("ANALYZE pgqueuer")
        code, out = run("pgqueuer", WORKER + ["drain", db_url, str(batch)], _env(),
                        cwd=str(REPO), timeout=20 + n / 1000)
        if code != 0:
            result.notes.append(f"pgqueuer drain exited {code}: {out.strip()[-300:]}")
        for line in out.splitlines():
            if line.startswith("{"):
                result.rss_kb = json.loads(line).get("vm_hwm_kb")
        with conn.cursor() as cur:
            cur.execute(WINDOW)
            row = cur.fetchone()
            cur.execute("SELECT count(*) FROM pgqueuer")
            left = cur.fetchone()[0]
    finally:
        conn.close()
    if row:
        result.done, at_first, span = row
        if span:
            result.span = float(span)
            result.rate = (result.done - at_first) / result.span
    if result.done != n or left:
        result.notes.append(f"{result.done} of {n} successful, {left} left in the queue")
    return result


LATENCY_INSERT = ("INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
                  "VALUES (0, 'noop', 'latency probe'::bytea, 'queued') RETURNING id")


def _consumer_polled(conn: connection, dbname: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND query ILIKE '%%pgqueuer%%'", (dbname,))
        return cur.fetchone()[0] > 0


def pickup(db_url: str, batch: int, rate: float, seconds: float, repeats: int,
           pause: float) -> tuple[latency.Latency, latency.Latency, list[str]]:
    """Pickup latency of one idle pgqueuer consumer: single jobs, then a steady rate."""
    notes: list[str] = []
    conn = connect(db_url)
    proc = None
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE pgqueuer, pgqueuer_log")
        latency.install_claim_clock(conn, "pgqueuer", "queued", "picked")
        proc = Proc("pgqueuer", WORKER + ["serve", db_url, str(batch)], _env(), cwd=str(REPO))
        # Its one connection LISTENs, then dequeues: wait for the first dequeue.
        deadline = time.monotonic() + 15
        while not _consumer_polled(conn, database_name(db_url)):
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError(f"pgqueuer consumer did not start: {proc.output()[-300:]}")
            time.sleep(0.05)
        time.sleep(0.5)
        steady, single = latency.measure(conn, LATENCY_INSERT, rate, seconds, repeats, pause)
    finally:
        if proc is not None:
            code = proc.stop(signal.SIGINT, 15)
            if code != 0:
                notes.append(f"pgqueuer consumer exit code {code}: {proc.output()[-300:]}")
        conn.close()
    return steady, single, notes
