"""taskworker as the benchmark drives it: `python -m taskworker serve`
subprocesses with the no-op handler, fed a batch of pending tasks once they
listen, timed from the database's own completion timestamps.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from psycopg2.extensions import connection

from . import latency
from .databases import connect, count_listeners, database_name
from .processes import BenchError, Proc, run, workdir

REPO = Path(__file__).resolve().parent.parent
# taskworker's settings: never inherited from the caller's environment, so a
# stray FETCH_INTERVAL or TASK_TIMEOUT cannot change what is measured.
SETTING_VARS = (
    "DATABASE_URL", "WORKER_COUNT", "FETCH_INTERVAL", "FETCH_LIMIT", "TASK_MIN_SECONDS",
    "TASK_MAX_SECONDS", "TASK_FAILURE_RATE", "TASK_HANDLER", "LOG_LEVEL", "LOG_FORMAT",
    "LEASE_SECONDS", "MAX_RETRIES", "RETRY_BACKOFF", "MAX_RESCUES", "TASK_TIMEOUT",
    "SHUTDOWN_TIMEOUT", "STATEMENT_TIMEOUT", "CONNECT_TIMEOUT", "LISTEN", "LISTEN_DATABASE_URL",
)
NOOP = "benchmarks.noop:noop"
# An empty working directory: a developer's .env must not leak into the runs.


def env_for(db_url: str, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["DATABASE_URL"] = db_url
    env.update({k.upper(): str(v) for k, v in settings.items() if v is not None})
    return env


def migrate(db_url: str, pythonpath: str | None = None) -> None:
    """`taskworker migrate` on `db_url`; `pythonpath`: where taskworker is imported
    from (another version, which applies its own migrations)."""
    env = env_for(db_url)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    code, out = run("migrate", [sys.executable, "-m", "taskworker", "migrate"],
                    env, cwd=workdir("cwd"), timeout=60)
    if code != 0:
        raise BenchError(f"taskworker migrate exited {code}: {out.strip()[-500:]}")


def start_serve(db_url: str, workers: int, fetch_limit: int | None, prefix: Sequence[str] = (),
                handler: str | None = NOOP, pythonpath: str | None = None,
                **settings: object) -> Proc:
    """One `python -m taskworker serve`, behind `prefix` (e.g. `ip netns exec H`,
    which execs it: the pid is the serve process's own). handler None: no
    TASK_HANDLER; `pythonpath`: where taskworker is imported from (another version)."""
    if handler is not None:
        settings["task_handler"] = handler
    env = env_for(db_url, worker_count=workers, fetch_limit=fetch_limit,
                  log_level="WARNING", **settings)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return Proc("serve", [*prefix, sys.executable, "-m", "taskworker", "serve"], env,
                cwd=workdir("cwd"))


def wait_ready(db_url: str, procs: list[Proc], timeout: float = 15.0) -> bool:
    """Wait until every process has its LISTEN connection up (idle, waiting).

    False if that was not seen in time (the processes may still be fine, but
    the pickup of the first batch then includes some start-up).
    """
    conn = connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise BenchError(f"taskworker serve exited {p.popen.returncode} at start: "
                                     f"{p.output().strip()[-500:]}")
            if count_listeners(conn, database_name(db_url)) >= len(procs):
                time.sleep(0.2)  # let the fetchers finish their first (empty) claim
                return True
            time.sleep(0.05)
        return False
    finally:
        conn.close()


@dataclass
class Drain:
    """One throughput run: `n` tasks through `processes` serve processes."""
    n: int
    processes: int
    workers: int
    fetch_limit: int | None  # None: unset (serve's default)
    analyze: bool = True  # ANALYZE in the inserting transaction (planner statistics)
    rate: float | None = None  # tasks/s from the first to the last completion
    span: float | None = None  # seconds from the first to the last completion
    wall: float | None = None  # seconds from the insert's commit to "none left"
    done: int = 0
    errors: int = 0
    left: int = 0
    rss_kb: list[int | None] = field(default_factory=list)  # VmHWM per process
    notes: list[str] = field(default_factory=list)  # anything odd

    @property
    def setting(self) -> str:
        return f"WORKER_COUNT={self.workers} FETCH_LIMIT={self.fetch_limit}"


INSERT_PENDING = """
WITH ins AS (
    INSERT INTO tasks (payload) SELECT 'task ' || n FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
# Both checks use taskworker's partial indexes: cheap however big the table.
ANY_LEFT = ("SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'pending') "
            "OR EXISTS (SELECT 1 FROM tasks WHERE status = 'in_progress')")
WINDOW = """
WITH r AS (SELECT status, updated_at FROM tasks WHERE id BETWEEN %(lo)s AND %(hi)s),
     w AS (SELECT min(updated_at) AS t0, max(updated_at) AS t1 FROM r WHERE status = 'done')
SELECT count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'error'),
       count(*) FILTER (WHERE status IN ('pending', 'in_progress')),
       count(*) FILTER (WHERE status = 'done' AND updated_at = w.t0),
       extract(epoch FROM w.t1 - w.t0)
FROM r, w
GROUP BY w.t0, w.t1
"""


def throughput(db_url: str, n: int, workers: int, fetch_limit: int | None, processes: int = 1,
               truncate: bool = True, vacuum: bool = False, analyze: bool = True,
               insert: str = INSERT_PENDING, checkpoint: bool = False,
               on_start: Callable[[list[Proc]], None] | None = None,
               start: Callable[[], list[Proc]] | None = None,
               on_drained: Callable[[list[Proc]], None] | None = None) -> Drain:
    """Start the processes, wait until they listen, insert `n` pending tasks in
    one statement (one NOTIFY wakes them all) and time the drain.

    `start` starts the processes instead of `processes` local ones with the no-op
    handler (they must use the database of `db_url`, which the harness uses).
    `on_start` is called once the insert committed, `on_drained` once no task is
    left (before the processes are stopped).

    The rate is taken from the rows' own `updated_at` (set by the completion
    statement): (done - those of the first completion batch) / (last - first),
    so process start-up and the poll interval are not in it.
    """
    result = Drain(n, processes, workers, fetch_limit, analyze=analyze)
    conn = connect(db_url)
    try:
        _drain(conn, db_url, result, truncate, vacuum, insert, on_start, start, on_drained,
               checkpoint)
    finally:
        conn.close()
    if result.done != n:
        result.notes.append(f"{result.done} of {n} done, {result.errors} error, "
                            f"{result.left} pending or in progress after shutdown")
    return result


def _drain(conn: connection, db_url: str, result: Drain, truncate: bool, vacuum: bool,
           insert: str, on_start: Callable[[list[Proc]], None] | None,
           start: Callable[[], list[Proc]] | None,
           on_drained: Callable[[list[Proc]], None] | None, checkpoint: bool = False) -> None:
    n, workers, fetch_limit = result.n, result.workers, result.fetch_limit
    procs: list[Proc] = []
    try:
        with conn.cursor() as cur:
            if truncate:
                cur.execute("TRUNCATE tasks")
            if vacuum:
                cur.execute("VACUUM ANALYZE tasks")
            if checkpoint:  # (so that no checkpoint of the last run's writes lands in this one)
                cur.execute("CHECKPOINT")
        if start is not None:
            procs = start()
        else:
            procs = [start_serve(db_url, workers, fetch_limit) for _ in range(result.processes)]
        if not wait_ready(db_url, procs):
            result.notes.append("LISTEN connections not seen within 15 s of start")
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(insert, (n,))
            lo, hi, _ = cur.fetchone()
            if result.analyze:
                cur.execute("ANALYZE tasks")  # counts our own uncommitted rows
        conn.commit()
        conn.autocommit = True
        committed = time.monotonic()
        if on_start:
            on_start(procs)
        deadline = committed + 20 + n / 1000
        drained = False
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(ANY_LEFT)
                if not cur.fetchone()[0]:
                    drained = True
                    break
                if not any(p.alive() for p in procs):
                    break
                time.sleep(0.05)
        if drained:
            result.wall = time.monotonic() - committed
            if on_drained:
                on_drained(procs)
        else:
            result.notes.append(f"not drained after {time.monotonic() - committed:.0f} s")
        result.rss_kb = [p.vm_hwm_kb() for p in procs]
    finally:
        codes = [(p, p.stop()) for p in procs]
        for p, code in codes:
            if code != 0 or p.killed:
                result.notes.append(f"serve pid {p.pid} exit code {code}"
                                    + (" (killed after 30 s)" if p.killed else ""))
            lines = [ln for ln in p.output().splitlines() if ln.strip()]
            if lines:
                result.notes.append(f"serve pid {p.pid} printed {len(lines)} lines at "
                                    f"LOG_LEVEL=WARNING, first: {lines[0][:200]}")
    with conn.cursor() as cur:
        cur.execute(WINDOW, {"lo": lo, "hi": hi})
        row = cur.fetchone()
    if row:
        result.done, result.errors, result.left, at_first, span = row
        if span:
            result.span = float(span)
            result.rate = (result.done - at_first) / result.span


def median_drain(runs: list[Drain]) -> Drain:
    """The run with the median rate (runs without a rate sort first)."""
    ranked = sorted(runs, key=lambda d: d.rate or 0.0)
    return ranked[len(ranked) // 2]


OLD_DONE = """
INSERT INTO tasks (payload, status, result, attempts, created_at, updated_at, run_at)
SELECT 'old task ' || n, 'done', 'old task ' || n, 1,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n"""


def add_finished_rows(db_url: str, count: int, insert: str = OLD_DONE,
                      params: Mapping[str, object] | None = None, chunk: int = 0,
                      say: Callable[[str], None] | None = None) -> None:
    """`count` finished rows, as a long-running queue leaves behind (by default
    done, a day old), then VACUUM ANALYZE. `insert` makes rows %(first)s to
    %(last)s of %(rows)s (with `params`), `chunk` rows a statement (0: all in one):
    millions in one statement would say nothing for many minutes, and hold
    one transaction's worth of WAL."""
    conn = connect(db_url)
    step = chunk or count
    try:
        with conn.cursor() as cur:
            for first in range(1, count + 1, step):
                last = min(count, first + step - 1)
                cur.execute(insert, {**(params or {}), "first": first, "last": last,
                                     "rows": count})
                if say is not None:
                    say(f"{last:,} of {count:,} finished rows")
            cur.execute("VACUUM ANALYZE tasks")
    finally:
        conn.close()


def pickup(db_url: str, workers: int, fetch_limit: int, rate: float, seconds: float,
           repeats: int, pause: float) -> tuple[latency.Latency, latency.Latency, list[str]]:
    """Pickup latency of one idle serve process: single tasks, then a steady rate."""
    notes: list[str] = []
    conn = connect(db_url)
    proc = None
    try:
        latency.install_claim_clock(conn, "tasks", "pending", "in_progress")
        proc = start_serve(db_url, workers, fetch_limit)
        if not wait_ready(db_url, [proc]):
            notes.append("LISTEN connection not seen within 15 s of start")
        steady, single = latency.measure(conn, LATENCY_INSERT, rate, seconds, repeats, pause)
    finally:
        if proc is not None:
            code = proc.stop()
            if code != 0:
                notes.append(f"serve exit code {code}")
            lines = [ln for ln in proc.output().splitlines() if ln.strip()]
            if lines:
                notes.append(f"serve printed {len(lines)} lines at LOG_LEVEL=WARNING, "
                             f"first: {lines[0][:200]}")
        conn.close()
    return steady, single, notes


LATENCY_INSERT = "INSERT INTO tasks (payload) VALUES ('latency probe') RETURNING id"
