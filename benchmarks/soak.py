"""A month of production in an afternoon (issue 27, part 19): hours of steady
load on a throwaway PostgreSQL cluster with autovacuum on at PostgreSQL's
defaults, reported minute by minute.

    python -m benchmarks.soak [--minutes 30] [--rate 5000] [--batch 100]
                              [--saturation-at 5,28] [--long-transaction 12,10]
                              [--freeze-at 15] [--plot FILE.svg] [--markdown FILE]

(also `python -m benchmarks.run --only soak`, with the same options prefixed
--soak-). What runs:

  cluster    tests/pgserver.py's throwaway cluster (initdb from the installed
             server binaries; fsync, synchronous_commit and full_page_writes off,
             as for every throwaway cluster; everything else, autovacuum included,
             at PostgreSQL's defaults), one database migrated by `taskworker migrate`
  serve      PROCESSES (2) `taskworker serve`, WORKER_COUNT=100, TASK_MODULES=
             benchmarks.soak_tasks, PRUNE_AFTER short (60s), every other setting
             at its default (FETCH_LIMIT unset), LOG_LEVEL=WARNING
  feed       benchmarks/soak_feeder.py, a process of its own: RATE calls a second
             of the `soak` task in commits of BATCH rows, each with ~1 KB of JSON
             arguments (format 2, as `soak.enqueue(conn, ...)` writes them)
  probes     the harness inserts single probe calls (one per commit, 20/s); a row
             trigger records when each is claimed: pickup = claim - the insert's
             commit, both from this machine's clock (as benchmarks/latency.py)

Per minute: tasks done (tasks created - the change in open tasks, from the id
sequence and the partial indexes: pruned rows are counted), the backlog (pending,
the largest of the 5-second samples in the minute, and at its end), pickup p50/p99
of the probes inserted in the minute, CPU per task of the serve processes and of
the whole cluster (every backend, autovacuum and background process: the
postmaster's live children plus what it reaped, from /proc), the tasks table's
heap, TOAST and each index's size, live and dead tuples, autovacuum and autoanalyze
runs (pg_stat_user_tables), and each serve's RSS. A plot is written as an SVG
(drawn here: no plotting library is a dependency).

Options (events at a minute boundary, counted from the start of the feed):
  --saturation-at M,...   the feed stopped, the backlog drained, then a
                          100,000-task backlog inserted in one statement and
                          drained: tasks/s from the rows' own timestamps (the
                          probes at minute 5 and 28 should be within 0.95)
  --long-transaction S,L  a session holds a REPEATABLE READ transaction (with an
                          xid) from minute S for L minutes: vacuum can remove
                          nothing meanwhile; its effect and the recovery after
  --freeze-at M           VACUUM FREEZE tasks under the full feed, on a session of
                          its own; pickup p99 of the probes while it runs
  --audit                 record every claim and completion per task id (two row
                          triggers): nothing lost, nothing done twice (the test)
  --tasks-storage K=V,... storage parameters of the tasks table set before the
                          start (ALTER TABLE tasks SET (...)): per-table
                          autovacuum settings, fillfactor, as the production
                          guide suggests
  --history N             N finished calls (1 to 30 days old, ~300 B of arguments,
                          98% done, 2% error) in the table before serve starts,
                          vacuumed and analyzed: serve's pruner deletes them while
                          the feed runs (item 3); per minute, how many are left

The targets of the issue for the full run are checked in `targets()`.
"""
from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime
import json
import math
import os
import select
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from . import processes
from . import taskworker_runs as tw
from .databases import connect
from .processes import BenchError, Proc

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODULE = "benchmarks.soak_tasks"
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 5.0  # seconds between backlog samples
MINUTE = 60.0
DRAIN_WAIT = 180.0  # seconds a backlog may take to drain once the feed stopped


@dataclass
class Options:
    minutes: float = 30.0
    rate: float = 5000.0  # tasks per second fed
    batch: int = 100  # rows per commit
    processes: int = 2
    workers: int = 100  # WORKER_COUNT of each serve
    prune_after: str = "60s"
    payload_bytes: int = 1024  # size of each call's JSON arguments
    probe_rate: float = 20.0  # pickup probes per second
    saturation_at: tuple[float, ...] = ()  # minutes
    saturation_backlog: int = 100_000
    long_transaction: tuple[float, float] | None = None  # (start minute, minutes held)
    freeze_at: float | None = None  # minute
    audit: bool = False
    history: int = 0  # finished rows in the table before serve starts (item 3)
    tasks_storage: str = ""  # "k=v,..." for ALTER TABLE tasks SET (...) before the start
    minute: float = MINUTE  # seconds per reported "minute" (shorter only in quick checks)


@dataclass
class Minute:
    index: int  # 1-based
    end: float  # seconds since the feed started
    seconds: float
    done: int
    backlog_max: int
    backlog_end: int
    fed_rate: float  # tasks created per second in the minute (feed, probes, saturation)
    serve_cpu: float  # CPU seconds of the serve processes in the minute
    pg_cpu: float  # CPU seconds of the whole cluster in the minute
    heap_mb: float
    toast_mb: float
    indexes_mb: dict[str, float]
    live: int
    dead: int
    autovacuums: int  # cumulative, since the start
    autoanalyzes: int
    rss_mb: list[float]
    history_left: int = 0  # of the finished rows there before the start (--history)
    events: list[str] = field(default_factory=list)
    pickups: list[float] = field(default_factory=list)  # ms, probes inserted in the minute

    def pct(self, p: float) -> float | None:
        return percentile(self.pickups, p)

    @property
    def done_rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def cpu_per_task_us(self, which: str) -> float | None:
        cpu = self.serve_cpu if which == "serve" else self.pg_cpu
        return cpu / self.done * 1e6 if self.done else None

    @property
    def index_total_mb(self) -> float:
        return sum(self.indexes_mb.values())


@dataclass
class Saturation:
    at_minute: int
    n: int
    rate: float | None = None  # tasks/s, first to last completion (rows' updated_at)
    wall: float | None = None  # seconds from the insert's commit to no open task
    drained_first: float | None = None  # seconds to drain what the feed had left


@dataclass
class Held:
    """The long transaction, or the VACUUM FREEZE: when, and what it saw."""
    start: float  # seconds since the feed started
    end: float | None = None
    detail: str = ""


@dataclass
class Audit:
    fed: int = 0  # tasks committed by the feeder, the probes and saturation probes
    audited: int = 0  # distinct task ids claimed at least once
    completed: int = 0  # distinct task ids completed (done) at least once
    claimed_twice: int = 0
    completed_twice: int = 0
    left_open: int = 0  # pending or in progress at the end
    errors: int = 0  # rows in error at the end (also the pruned: from the audit)


@dataclass
class Result:
    options: Options
    minutes: list[Minute] = field(default_factory=list)
    saturations: list[Saturation] = field(default_factory=list)
    long_transaction: Held | None = None
    freeze: Held | None = None
    history: Held | None = None  # the fill (detail: its size), end: when none was left
    freeze_pickups: list[float] = field(default_factory=list)
    audit: Audit | None = None
    fed: int = 0
    feeder_rates: list[float] = field(default_factory=list)
    probes_missing: int = 0
    server: dict[str, str] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    serve_log_lines: list[str] = field(default_factory=list)
    server_log: list[str] = field(default_factory=list)  # ERROR lines and their details
    notes: list[str] = field(default_factory=list)
    started: str = ""


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def arguments(payload_bytes: int, probe: bool = False) -> str:
    """A call of the soak task, {"args": [...], "kwargs": {...}}, of about
    `payload_bytes` bytes of JSON: an order with a few fields and lines."""
    lines: list[dict[str, Any]] = []
    order: dict[str, Any] = {"customer": "c-000123", "currency": "EUR", "lines": lines}
    i = 0
    while len(json.dumps(order)) < payload_bytes - 60:
        lines.append({"sku": f"SKU-{i:05d}", "qty": i % 7 + 1, "price": "19.90",
                      "note": "gift wrap" if i % 3 == 0 else ""})
        i += 1
    kwargs: dict[str, Any] = {"order": order}
    if probe:
        kwargs["probe"] = True
    return json.dumps({"args": [0], "kwargs": kwargs})


# --- the cluster and its processes

def _pgserver() -> Any:
    """tests/pgserver.py (its helpers import each other as top-level modules)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import pgserver  # noqa: PLC0415

    return pgserver


def _cpu_seconds(pid: int, children: bool) -> float:
    """utime + stime of `pid` (and of the children it reaped), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()  # fields[0] is /proc's field 3 (state)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def cluster_cpu(postmaster: int) -> float:
    """CPU seconds of the whole cluster so far: the postmaster, its live children
    (backends, autovacuum, background processes) and those it reaped."""
    total = _cpu_seconds(postmaster, children=True)
    for pid in processes.process_tree(postmaster)[1:]:
        total += _cpu_seconds(pid, children=False)
    return total


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


PROBE_CLOCK = """
CREATE TABLE soak_claims (id bigint PRIMARY KEY, claimed_at timestamptz NOT NULL);
CREATE FUNCTION soak_record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_claims VALUES (NEW.id, clock_timestamp()) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER soak_record_claim AFTER UPDATE ON tasks FOR EACH ROW
WHEN (OLD.status::text = 'pending' AND NEW.status::text = 'in_progress'
      AND NEW.format = 2 AND (NEW.arguments -> 'kwargs') ? 'probe')
EXECUTE FUNCTION soak_record_claim();
"""
AUDIT = """
CREATE TABLE soak_audit (id bigint PRIMARY KEY, claims integer NOT NULL DEFAULT 0,
                         completions integer NOT NULL DEFAULT 0,
                         errors integer NOT NULL DEFAULT 0);
CREATE FUNCTION soak_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_audit AS a (id, claims, completions, errors)
    VALUES (NEW.id, (NEW.status = 'in_progress')::int, (NEW.status = 'done')::int,
            (NEW.status = 'error')::int)
    ON CONFLICT (id) DO UPDATE
    SET claims = a.claims + EXCLUDED.claims, completions = a.completions + EXCLUDED.completions,
        errors = a.errors + EXCLUDED.errors;
    RETURN NULL;
END $$;
CREATE TRIGGER soak_audit AFTER UPDATE ON tasks FOR EACH ROW
WHEN (OLD.status::text IS DISTINCT FROM NEW.status::text
      AND NEW.status::text IN ('in_progress', 'done', 'error'))
EXECUTE FUNCTION soak_audit();
"""
PROBE_INSERT = ("INSERT INTO tasks (task, arguments, format) VALUES ('soak', %s::jsonb, 2) "
                "RETURNING id")
BULK_INSERT = """
WITH ins AS (
    INSERT INTO tasks (task, arguments, format)
    SELECT 'soak', %s::jsonb, 2 FROM generate_series(1, %s)
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
HISTORY_FILL = """
INSERT INTO tasks (task, format, arguments, status, return_value, error, attempts, run_at,
                   started_at, created_at, updated_at)
SELECT 'soak', 2, ('{"args": [' || n || '], "kwargs": {"order": {"customer": "c-' || n %% 5000
                   || '", "currency": "EUR", "lines": [{"sku": "SKU-' || n %% 977
                   || '", "qty": 2, "price": "19.90", "note": ""}, {"sku": "SKU-00001", '
                   || '"qty": 1, "price": "4.50", "note": "gift wrap"}]}}}')::jsonb,
       s.status, CASE WHEN s.status = 'done' THEN 'null'::jsonb END,
       CASE WHEN s.status = 'error' THEN 'ValueError: no such customer c-' || n %% 5000 END,
       1, t.at - interval '2 s', t.at - interval '1 s', t.at - interval '2 s', t.at
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
CROSS JOIN LATERAL (SELECT CASE WHEN n %% 50 = 1 THEN 'error' ELSE 'done' END AS status) AS s
CROSS JOIN LATERAL (SELECT now() - interval '1 day'
                           - (%(rows)s - n) * (interval '29 days' / %(rows)s) AS at) AS t
"""
HISTORY_CHUNK = 1_000_000  # rows per INSERT of the fill
OPEN = ("SELECT (SELECT count(*) FROM tasks WHERE status = 'pending'), "
        "(SELECT count(*) FROM tasks WHERE status = 'in_progress')")
TABLE_STATS = """
SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(c.reltoastrelid), 0),
       s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count
FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE c.oid = 'tasks'::regclass
"""
INDEX_SIZES = ("SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
               "WHERE relid = 'tasks'::regclass ORDER BY indexrelname")
SETTINGS = ("autovacuum", "autovacuum_naptime", "autovacuum_vacuum_scale_factor",
            "autovacuum_vacuum_threshold", "autovacuum_vacuum_insert_scale_factor",
            "autovacuum_vacuum_cost_limit", "autovacuum_vacuum_cost_delay", "shared_buffers",
            "fsync", "synchronous_commit", "server_version", "max_wal_size",
            "checkpoint_timeout")
WINDOW = """
SELECT count(*), count(*) FILTER (WHERE updated_at = w.t0), extract(epoch FROM w.t1 - w.t0)
FROM tasks, (SELECT min(updated_at) AS t0, max(updated_at) AS t1 FROM tasks
             WHERE id BETWEEN %(lo)s AND %(hi)s AND status = 'done') AS w
WHERE id BETWEEN %(lo)s AND %(hi)s AND status = 'done'
GROUP BY w.t0, w.t1
"""


class Soak:
    """One soak: the cluster is up and migrated at `url`; `postmaster` its pid."""

    def __init__(self, url: str, postmaster: int, options: Options,
                 say: Callable[[str], None]) -> None:
        self.url, self.postmaster, self.o, self.say = url, postmaster, options, say
        self.r = Result(options, started=f"{datetime.datetime.now():%Y-%m-%d %H:%M}")
        self.conn = connect(url)
        self.serves: list[Proc] = []
        self.feeder: Proc | None = None
        self.args = arguments(options.payload_bytes)
        self.probe_args = arguments(options.payload_bytes, probe=True)
        self.probes: list[tuple[int, float]] = []  # (id, insert committed, epoch)
        self.backlogs: list[int] = []
        self.t0 = 0.0
        self.t0_epoch = 0.0
        self.events: list[str] = []
        self.holder: psycopg2.extensions.connection | None = None
        self.freezer: psycopg2.extensions.connection | None = None
        self.freeze_cursor: psycopg2.extensions.cursor | None = None
        self.fed_extra = 0  # tasks the probes and saturation probes created
        self.history_samples: list[int] = []  # ids of --history rows (history_left)

    def q(self, sql: str, params: Any = None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    # --- processes

    def start_serves(self) -> None:
        for _ in range(self.o.processes):
            self.serves.append(tw.start_serve(
                self.url, self.o.workers, None, handler=None,  # type: ignore[arg-type]
                task_modules=MODULE, prune_after=self.o.prune_after))
        if not tw.wait_ready(self.url, self.serves, timeout=30):
            self.r.notes.append("LISTEN connections not seen within 30 s of start")

    def start_feeder(self) -> None:
        self.feeder = Proc("soak-feeder", [sys.executable, "-m", "benchmarks.soak_feeder",
                                           self.url, str(self.o.rate), str(self.o.batch),
                                           self.args], tw.env_for(self.url), cwd=str(tw.REPO))

    def stop_feeder(self) -> None:
        if self.feeder is None:
            return
        code = self.feeder.stop(signal.SIGTERM, 30)
        out = self.feeder.output().split()
        if code != 0 or len(out) < 2:
            raise BenchError(f"soak feeder exited {code}: {self.feeder.output()[-300:]}")
        self.r.fed += int(out[-2])
        self.r.feeder_rates.append(float(out[-1]))
        self.feeder = None

    # --- samples

    def open_tasks(self) -> int:
        pending, running = self.q(OPEN)[0]
        self.backlogs.append(pending)
        return pending + running

    def last_id(self) -> int:
        return self.q("SELECT coalesce(max(id), 0) FROM tasks")[0][0]

    def cpu(self) -> tuple[float, float]:
        return (sum(_cpu_seconds(p.pid, children=True) for p in self.serves),
                cluster_cpu(self.postmaster))

    def probe(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(PROBE_INSERT, (self.probe_args,))  # autocommit: after the commit
            self.probes.append((_one(cur)[0], time.time()))
        self.fed_extra += 1

    def history_left(self) -> int:
        """About how many of the --history rows are still there, from 1,000 of their
        ids spread evenly, the highest included (the pruner deletes the lowest
        first): index lookups, where `min(id)` would walk every deleted entry the
        pruner left in tasks_pkey and take a core from the run it measures."""
        if not self.history_samples:
            return 0
        there = self.q("SELECT count(*) FROM tasks WHERE id = ANY(%s)",
                       (self.history_samples,))[0][0]
        return round(there / len(self.history_samples) * self.o.history)

    # --- events

    def fill_history(self) -> None:
        """The finished rows a queue keeps when nothing prunes it, made before serve
        starts; vacuumed and analyzed as a table that has been around would be."""
        n, started = self.o.history, time.monotonic()
        tw.add_finished_rows(self.url, n, HISTORY_FILL, chunk=HISTORY_CHUNK,
                             say=lambda m: self.say(f"soak: history: {m}"))
        top = self.last_id()
        step = max(1, n // 1000)
        self.history_samples = [*range(top - n + step, top, step), top]
        self.q("CHECKPOINT")
        heap, _, *_ = self.q(TABLE_STATS)[0]
        indexes = sum(size for _, size in self.q(INDEX_SIZES))
        self.r.history = Held(0.0, detail=(
            f"{n:,} finished rows made in {time.monotonic() - started:.0f} s (vacuumed and "
            f"analyzed): heap {heap / 2**20:,.0f} MB, indexes {indexes / 2**20:,.0f} MB"))
        self.say(f"soak: {self.r.history.detail}")

    def saturation(self, minute: int) -> Saturation:
        s = Saturation(minute, self.o.saturation_backlog)
        self.say(f"soak: saturation probe after minute {minute}: feed stopped, "
                 f"{s.n:,} tasks")
        self.stop_feeder()
        t = time.monotonic()
        if not self._wait_drained(DRAIN_WAIT):
            self.r.notes.append(f"saturation probe after minute {minute} not run: the feed's "
                                f"backlog was not drained {DRAIN_WAIT:.0f} s after the feed "
                                f"stopped ({self.backlogs[-1]:,} pending)")
            self.start_feeder()
            return s
        s.drained_first = time.monotonic() - t
        self.conn.autocommit = False
        with self.conn.cursor() as cur:
            cur.execute(BULK_INSERT, (self.args, s.n))
            lo, hi, _ = _one(cur)
        self.conn.commit()
        self.conn.autocommit = True
        self.fed_extra += s.n
        t = time.monotonic()
        if self._wait_drained(60 + s.n / 500):
            s.wall = time.monotonic() - t
        else:
            self.r.notes.append(f"saturation probe after minute {minute}: not drained within "
                                f"{60 + s.n / 500:.0f} s")
        row = self.q(WINDOW, {"lo": lo, "hi": hi})
        if row and row[0][2]:
            done, at_first, span = row[0]
            s.rate = (done - at_first) / float(span)
            if done != s.n:
                self.r.notes.append(f"saturation probe after minute {minute}: {done:,} of "
                                    f"{s.n:,} rows still there to time (PRUNE_AFTER pruned "
                                    "the others): the rate is from those")
        self.start_feeder()
        self.say(f"soak: saturation probe: {s.rate or 0:,.0f} tasks/s, drained in "
                 f"{s.wall:.1f} s")
        return s

    def _wait_drained(self, timeout: float) -> bool:
        """Wait until no task is pending or in progress: False if some still are
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.open_tasks():
            if time.monotonic() > deadline:
                return False
            if not all(p.alive() for p in self.serves):
                raise BenchError("soak: a serve process exited")
            time.sleep(0.05)
        return True

    def hold_transaction(self) -> None:
        self.holder = connect(self.url)
        self.holder.autocommit = False
        with self.holder.cursor() as cur:
            cur.execute("SET application_name = 'soak long transaction'")
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SELECT txid_current(), (SELECT count(*) FROM tasks "
                        "WHERE status = 'pending')")
        self.r.long_transaction = Held(time.monotonic() - self.t0)
        self.say("soak: a transaction held open from now on")

    def end_transaction(self) -> None:
        assert self.holder is not None and self.r.long_transaction is not None
        self.holder.commit()
        self.holder.close()
        self.holder = None
        self.r.long_transaction.end = time.monotonic() - self.t0
        self.say("soak: the long transaction ended")

    def start_freeze(self) -> None:
        self.freezer = psycopg2.connect(self.url, async_=1, application_name="soak freeze")
        _wait_async(self.freezer)
        self.freeze_cursor = self.freezer.cursor()  # (kept: the poll needs it alive)
        self.freeze_cursor.execute("VACUUM (FREEZE) tasks")
        self.r.freeze = Held(time.monotonic() - self.t0)
        self.say("soak: VACUUM FREEZE tasks started")

    def poll_freeze(self) -> None:
        if self.freezer is None:
            return
        if self.freezer.poll() == psycopg2.extensions.POLL_OK:
            assert self.r.freeze is not None
            self.r.freeze.end = time.monotonic() - self.t0
            self.freezer.close()
            self.freezer = None
            self.say(f"soak: VACUUM FREEZE done in "
                     f"{self.r.freeze.end - self.r.freeze.start:.1f} s")

    # --- the run

    def run(self) -> Result:
        o = self.o
        self.r.load = (os.getloadavg()[0], 0.0)
        self.conn.cursor().execute(PROBE_CLOCK)
        if o.audit:
            self.conn.cursor().execute(AUDIT)
        if o.tasks_storage:
            self.q(f"ALTER TABLE tasks SET ({o.tasks_storage})")
        if o.history:
            self.fill_history()
        self.start_serves()
        first_id = self.last_id()
        self.start_feeder()
        self.t0 = time.monotonic()
        self.t0_epoch = time.time()
        end = self.t0 + o.minutes * o.minute
        last = (self.t0, self.last_id(), self.open_tasks(), *self.cpu())
        self.backlogs = []
        next_probe, next_sample, next_minute = self.t0, self.t0 + SAMPLE_EVERY, self.t0 + o.minute
        minute = 0
        lt = o.long_transaction
        self.say(f"soak: {o.minutes:g} minutes of {o.rate:,.0f} tasks/s in commits of "
                 f"{o.batch}, {o.processes} x serve WORKER_COUNT={o.workers}, "
                 f"PRUNE_AFTER={o.prune_after}")
        while True:
            now = time.monotonic()
            if now >= next_probe:
                self.probe()
                next_probe = max(next_probe + 1 / o.probe_rate, now - 1)
            if now >= next_sample:
                self.open_tasks()
                if self.r.history and self.r.history.end is None and not self.history_left():
                    self.r.history.end = now - self.t0
                    self.say(f"soak: history all pruned, {self.r.history.end:.0f} s in")
                next_sample += SAMPLE_EVERY
                for p in self.serves:
                    if not p.alive():
                        raise BenchError(f"soak: serve pid {p.pid} exited "
                                         f"{p.popen.returncode}: {p.output()[-500:]}")
            self.poll_freeze()
            if now >= next_minute:
                minute += 1
                last = self.minute_row(minute, last)
                at = minute
                if self.holder is not None and lt and at >= lt[0] + lt[1]:
                    self.end_transaction()
                if now >= end:
                    break
                if lt and at == int(lt[0]) and self.r.long_transaction is None:
                    self.hold_transaction()
                if o.freeze_at is not None and at == int(o.freeze_at) and self.r.freeze is None:
                    self.start_freeze()
                if at in [int(m) for m in o.saturation_at]:
                    self.events.append("saturation")
                    self.r.saturations.append(self.saturation(at))
                    # (the probe's minute runs on for a full minute after it)
                    next_probe = next_sample = next_minute = time.monotonic()
                next_minute += o.minute
            time.sleep(max(0.0, min(next_probe, next_sample, next_minute) - time.monotonic()))
        self.finish(first_id)
        return self.r

    def minute_row(self, index: int, last: tuple) -> tuple:
        t_prev, id_prev, open_prev, serve_prev, pg_prev = last
        now = time.monotonic()
        top = self.last_id()
        backlogs = self.backlogs
        open_now = self.open_tasks()
        serve_cpu, pg_cpu = self.cpu()
        heap, toast, live, dead, autovacuums, autoanalyzes = self.q(TABLE_STATS)[0]
        indexes = {name: size / 2**20 for name, size in self.q(INDEX_SIZES)}
        history_left = self.history_left()
        events = list(self.events)
        h = self.r.history
        if h and (h.end is None or h.end > t_prev - self.t0):
            events.append("pruning")  # (some history was left at the minute's start)
            if h.end is None and not history_left:
                h.end = now - self.t0
        created = top - id_prev
        if self.holder is not None:
            events.append("long transaction")
        if self.freezer is not None or (self.r.freeze and self.r.freeze.end and
                                        self.r.freeze.end > t_prev - self.t0):
            events.append("VACUUM FREEZE")
        row = Minute(index, now - self.t0, now - t_prev, created - (open_now - open_prev),
                     max(backlogs, default=0), backlogs[-1], created / (now - t_prev),
                     serve_cpu - serve_prev, pg_cpu - pg_prev, heap / 2**20, toast / 2**20,
                     indexes, live, dead, autovacuums, autoanalyzes,
                     [_rss_mb(p.pid) for p in self.serves], history_left, events)
        self.events = []
        self.backlogs = []
        self.r.minutes.append(row)
        self.collect_pickups(wait=0)
        self.say(line_of(row))
        return (now, top, open_now, serve_cpu, pg_cpu)

    def collect_pickups(self, wait: float) -> None:
        """Pickups of the probes claimed so far, given to the minute they were
        inserted in (probes not claimed yet are looked at again later)."""
        ids = [i for i, _ in self.probes]
        deadline = time.monotonic() + wait
        while True:
            claimed = dict(self.q("SELECT id, extract(epoch FROM claimed_at)::float8 "
                                  "FROM soak_claims WHERE id = ANY(%s)", (ids,)))
            if len(claimed) == len(ids) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        left = []
        ends = [m.end for m in self.r.minutes]
        for i, t in self.probes:
            if i not in claimed:
                left.append((i, t))
                continue
            at = t - self.t0_epoch  # seconds since the feed started
            m = min(bisect.bisect_left(ends, at), len(ends) - 1)
            pickup = (claimed[i] - t) * 1000
            self.r.minutes[m].pickups.append(pickup)
            f = self.r.freeze
            if f and f.start <= at <= (f.end if f.end is not None else math.inf):
                self.r.freeze_pickups.append(pickup)
        self.probes = left

    def finish(self, first_id: int) -> None:
        self.stop_feeder()
        if self.holder is not None:
            self.end_transaction()
        self.r.fed += self.fed_extra
        t = time.monotonic()
        if not self._wait_drained(DRAIN_WAIT):
            self.r.notes.append(f"{self.backlogs[-1]:,} tasks still pending {DRAIN_WAIT:.0f} s "
                                "after the feed stopped (the run ends with them)")
        else:
            self.r.notes.append(f"the backlog left at the end drained in "
                                f"{time.monotonic() - t:.1f} s")
        self.collect_pickups(wait=10)
        self.r.probes_missing = len(self.probes)
        if self.freezer is not None:
            self.r.notes.append("VACUUM FREEZE still running at the end")
        if self.o.audit:
            self.r.audit = self.audit(first_id)
        for p in self.serves:
            code = p.stop()
            lines = [ln for ln in p.output().splitlines() if ln.strip()]
            self.r.serve_log_lines += lines[:5]
            if code != 0:
                self.r.notes.append(f"serve pid {p.pid} exited {code}")
        self.r.load = (self.r.load[0], os.getloadavg()[0])

    def audit(self, first_id: int) -> Audit:
        a = Audit(fed=self.r.fed)
        row = self.q("""
            SELECT count(*) FILTER (WHERE claims > 0), count(*) FILTER (WHERE completions > 0),
                   count(*) FILTER (WHERE claims > 1), count(*) FILTER (WHERE completions > 1),
                   count(*) FILTER (WHERE errors > 0)
            FROM soak_audit WHERE id > %s""", (first_id,))[0]
        a.audited, a.completed, a.claimed_twice, a.completed_twice, a.errors = row
        a.left_open = self.open_tasks()
        return a

    def close(self) -> None:
        for conn in (self.holder, self.freezer, self.conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()


def _one(cur: psycopg2.extensions.cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None  # (a statement that returns one row)
    return row


def _wait_async(conn: psycopg2.extensions.connection) -> None:
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], 10)
        else:
            select.select([conn.fileno()], [], [], 10)


@contextlib.contextmanager
def cluster() -> Iterator[tuple[str, int, dict[str, str]]]:
    """A throwaway cluster at its defaults (autovacuum on), one migrated database:
    (its URL, the postmaster's pid, the settings that matter here)."""
    pgserver = _pgserver()
    with pgserver.cluster(max_connections=300, tmp_prefix="tw-soak-") as running:
        url = pgserver.database_url(running.url, "soak")
        admin = connect(running.url)
        try:
            with admin.cursor() as cur:
                cur.execute("CREATE DATABASE soak")
                cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                            (list(SETTINGS),))
                settings = dict(cur.fetchall())
        finally:
            admin.close()
        tw.migrate(url)
        with open(os.path.join(running.root, "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        try:
            yield url, postmaster, settings
        finally:
            _server_log.extend(_log_errors(running.log))


_server_log: list[str] = []  # the last cluster's ERROR lines and their DETAIL (see run)


def _log_errors(log: str, most: int = 40) -> list[str]:
    """The server log's ERROR/FATAL lines with the DETAIL and STATEMENT lines after them."""
    out: list[str] = []
    keep = False
    for line in log.splitlines():
        if " ERROR: " in line or " FATAL: " in line:
            keep = True
        elif not line.startswith("\t") and " DETAIL: " not in line and " STATEMENT: " not in line \
                and " CONTEXT: " not in line:
            keep = False
        if keep:
            out.append(line[:400])
    return out[:most]


def run(options: Options, say: Callable[[str], None]) -> Result:
    """The whole soak on a cluster of its own; stops its processes on any exit."""
    del _server_log[:]
    with cluster() as (url, postmaster, settings):
        soak = Soak(url, postmaster, options, say)
        soak.r.server = settings
        try:
            soak.run()
        finally:
            if soak.feeder is not None:
                soak.feeder.stop(signal.SIGTERM, 10)
            for p in soak.serves:
                p.stop()
            soak.close()
    soak.r.server_log = list(_server_log)
    return soak.r


# --- the report

def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def line_of(m: Minute) -> str:
    return (f"soak minute {m.index}: {m.done_rate:,.0f}/s done, backlog max {m.backlog_max:,}, "
            f"p99 {_f(m.pct(99))} ms (so far), CPU/task serve {_f(m.cpu_per_task_us('serve'))} "
            f"us, pg {_f(m.cpu_per_task_us('pg'))} us, heap {m.heap_mb:.0f} MB, indexes "
            f"{m.index_total_mb:.0f} MB, dead {m.dead:,}, autovacuums {m.autovacuums}, "
            f"RSS {'/'.join(f'{r:.0f}' for r in m.rss_mb)} MB"
            + (f", history left {m.history_left:,}" if "pruning" in m.events else "")
            + (f" [{', '.join(m.events)}]" if m.events else ""))


def steady_minutes(r: Result) -> list[Minute]:
    """Minutes without a saturation probe in them (the feed ran the whole minute)."""
    return [m for m in r.minutes if "saturation" not in m.events]


def targets(r: Result) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) for each of item 1's targets (None: not measured)."""
    o, out = r.options, []
    steady = steady_minutes(r)
    one_second = o.rate
    worst = max((m.backlog_max for m in steady), default=None)
    out.append(("keeps up every minute: backlog under 1 s of feed "
                f"({one_second:,.0f} tasks; minutes without a saturation probe)",
                f"largest backlog sample {worst:,}" if worst is not None else "-",
                None if worst is None else worst < one_second))
    for which in ("serve", "pg"):
        first = _total_cpu(steady[:5], which)
        lastm = _total_cpu(steady[-5:], which)
        ratio = lastm / first if first and lastm else None
        out.append((f"CPU per task ({'serve processes' if which == 'serve' else 'PostgreSQL'})"
                    ", last 5 minutes <= 1.1x the first 5",
                    f"{_f(first)} -> {_f(lastm)} us: {_f(ratio, '.2f')}x",
                    None if ratio is None or len(steady) < 10 else ratio <= 1.1))
    rates = [s.rate for s in r.saturations if s.rate]
    if len(rates) >= 2:
        ratio = min(rates[0], rates[-1]) / max(rates[0], rates[-1])
        out.append(("saturation probes (first and last) within 0.95 of each other",
                    f"{rates[0]:,.0f} and {rates[-1]:,.0f} tasks/s: {ratio:.2f}", ratio >= 0.95))
    late = [m for m in r.minutes if m.index > 10]
    if late:
        for label, get in (("heap", lambda m: m.heap_mb), ("TOAST", lambda m: m.toast_mb),
                           ("indexes", lambda m: m.index_total_mb)):
            at10 = get(r.minutes[9])
            peak = max(get(m) for m in late)
            out.append((f"{label} size flat after the first 10 minutes (bound reached)",
                        f"{at10:.1f} MB at minute 10, at most {peak:.1f} MB after",
                        peak <= at10 * 1.1 + 1))
        rss10 = sum(r.minutes[9].rss_mb)
        rss_peak = max(sum(m.rss_mb) for m in late)
        out.append(("serve RSS flat after the first 10 minutes (both processes)",
                    f"{rss10:.0f} MB at minute 10, at most {rss_peak:.0f} MB after",
                    rss_peak <= rss10 * 1.1 + 2))
    if r.history is not None:
        pruning = [m for m in r.minutes if "pruning" in m.events]
        p99 = percentile([p for m in pruning for p in m.pickups], 99)
        took = "not finished within the run" if r.history.end is None else \
            f"all gone {r.history.end:.0f} s after the feed started (5-second samples)"
        out.append((f"pruning {r.options.history:,} finished rows under the feed: pickup p99 "
                    "at most 50 ms", f"p99 {_f(p99)} ms over the {len(pruning)} minutes it "
                    f"ran ({took})", None if p99 is None else p99 <= 50))
    if r.freeze is not None:
        p99 = percentile(r.freeze_pickups, 99)
        out.append(("VACUUM FREEZE under full load: pickup p99 under 50 ms",
                    f"p99 {_f(p99)} ms over {len(r.freeze_pickups)} probes, VACUUM took "
                    f"{_f((r.freeze.end or math.nan) - r.freeze.start)} s",
                    None if p99 is None else p99 < 50))
    return out


def _total_cpu(minutes: list[Minute], which: str) -> float | None:
    done = sum(m.done for m in minutes)
    if not done:
        return None
    return sum(m.serve_cpu if which == "serve" else m.pg_cpu for m in minutes) / done * 1e6


def long_transaction_effect(r: Result) -> list[str]:
    lt = r.long_transaction
    if lt is None or lt.end is None:
        return []
    before = [m for m in steady_minutes(r) if m.end <= lt.start][-5:]
    during = [m for m in r.minutes if lt.start < m.end <= lt.end + 1]
    after = [m for m in r.minutes if m.end > lt.end + 1]
    if not before or not during:
        return []

    def med(ms: list[Minute], get: Callable[[Minute], float | None]) -> float | None:
        vals = [v for v in (get(m) for m in ms) if v is not None]
        return statistics.median(vals) if vals else None
    p99 = lambda m: m.pct(99)  # noqa: E731
    cpu = lambda m: m.cpu_per_task_us("serve")  # noqa: E731
    pgc = lambda m: m.cpu_per_task_us("pg")  # noqa: E731
    lines = [f"Long transaction held from {lt.start / 60:.1f} to {lt.end / 60:.1f} min:",
             f"- pickup p99 (median of minutes): {_f(med(before, p99))} ms before, "
             f"{_f(med(during, p99))} during (worst {_f(max((p99(m) or 0) for m in during))}), "
             f"{_f(med(after[:2], p99))} in the 2 minutes after",
             f"- CPU per task, serve / PostgreSQL: {_f(med(before, cpu))} / "
             f"{_f(med(before, pgc))} us before, {_f(med(during[-2:], cpu))} / "
             f"{_f(med(during[-2:], pgc))} in its last 2 minutes, "
             f"{_f(med(after[:2], cpu))} / {_f(med(after[:2], pgc))} in the 2 after",
             f"- dead tuples {before[-1].dead:,} before, {during[-1].dead:,} at its end; heap "
             f"{before[-1].heap_mb:.0f} -> {during[-1].heap_mb:.0f} MB, indexes "
             f"{before[-1].index_total_mb:.0f} -> {during[-1].index_total_mb:.0f} MB"]
    base = med(before, pgc)
    recovered = next((m for m in after if base and (pgc(m) or math.inf) <= base * 1.1
                      and (p99(m) or math.inf) <= max(2 * (med(before, p99) or 0), 5)), None)
    lines.append("- recovered (PostgreSQL CPU per task within 1.1x of before, p99 within 2x) "
                 + (f"in minute {recovered.index}, {(recovered.end - lt.end) / 60:.1f} min "
                    "after the end" if recovered else "not within the run"))
    return lines


def report(r: Result, plot: str | None = None) -> list[str]:
    o = r.options
    s = r.server
    lines = [f"Soak (benchmarks/soak.py), started {r.started}: {o.minutes:g} minutes of "
             f"{o.rate:,.0f} tasks/s in commits of {o.batch}, ~{o.payload_bytes} B JSON "
             f"arguments; {o.processes} x serve WORKER_COUNT={o.workers} PRUNE_AFTER="
             f"{o.prune_after}"
             + (f"; ALTER TABLE tasks SET ({o.tasks_storage})" if o.tasks_storage else "")
             + f"; throwaway PostgreSQL {s.get('server_version', '?')}, autovacuum "
             f"{s.get('autovacuum', '?')} (naptime {s.get('autovacuum_naptime', '?')} s, scale "
             f"factor {s.get('autovacuum_vacuum_scale_factor', '?')}, cost limit "
             f"{s.get('autovacuum_vacuum_cost_limit', '?')}, delay "
             f"{s.get('autovacuum_vacuum_cost_delay', '?')} ms), fsync "
             f"{s.get('fsync', '?')}, synchronous_commit {s.get('synchronous_commit', '?')}; "
             f"load average {r.load[0]:.2f} at the start, {r.load[1]:.2f} at the end", "",
             "| min | done/s | backlog max | end | pickup p50 ms | p99 ms | CPU/task serve us "
             "| CPU/task PG us | heap MB | TOAST MB | indexes MB | live | dead | autovacuum "
             "| autoanalyze | serve RSS MB | events |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
             "---: | ---: | ---: | ---: | --- | --- |"]
    for m in r.minutes:
        lines.append(
            f"| {m.index} | {m.done_rate:,.0f} | {m.backlog_max:,} | {m.backlog_end:,} | "
            f"{_f(m.pct(50))} | {_f(m.pct(99))} | {_f(m.cpu_per_task_us('serve'))} | "
            f"{_f(m.cpu_per_task_us('pg'))} | {m.heap_mb:.1f} | {m.toast_mb:.1f} | "
            f"{m.index_total_mb:.1f} | {m.live:,} | {m.dead:,} | {m.autovacuums} | "
            f"{m.autoanalyzes} | {' / '.join(f'{x:.0f}' for x in m.rss_mb)} | "
            f"{', '.join(m.events)} |")
    if r.minutes:
        names = list(r.minutes[-1].indexes_mb)
        lines += ["", "Each index (MB), every 5th minute and the last:", "",
                  "| min | " + " | ".join(names) + " |",
                  "| ---: |" + " ---: |" * len(names)]
        for m in r.minutes:
            if m.index % 5 == 0 or m is r.minutes[-1]:
                lines.append(f"| {m.index} | "
                             + " | ".join(f"{m.indexes_mb.get(n, 0):.2f}" for n in names) + " |")
    if r.saturations:
        lines += ["", "Saturation probes (feed stopped, the backlog drained, then a backlog "
                  "inserted in one statement):", ""]
        for sat in r.saturations:
            lines.append(f"- after minute {sat.at_minute}: {sat.n:,} tasks at "
                         f"{_f(sat.rate, ',.0f')} tasks/s (first to last completion), "
                         f"drained {_f(sat.wall)} s after the commit; the feed's own backlog "
                         f"drained in {_f(sat.drained_first)} s first")
    lt = long_transaction_effect(r)
    if lt:
        lines += ["", *lt]
    if r.history is not None:
        lines += ["", f"History: {r.history.detail}; left at the end of each minute: "
                  + ", ".join(f"{m.index}: {m.history_left:,}" for m in r.minutes
                              if "pruning" in m.events)]
    lines += ["", "Targets:", ""]
    for target, figure, met in targets(r):
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        lines.append(f"- {target}: {figure} -> {verdict}")
    fed = r.fed
    lines += ["", f"Fed {fed:,} tasks (feeder achieved "
              f"{', '.join(f'{x:,.0f}' for x in r.feeder_rates)} tasks/s); probes never "
              f"claimed: {r.probes_missing}"]
    if r.audit:
        a = r.audit
        lines.append(f"Audit: {a.completed:,} of {a.fed:,} tasks completed, {a.completed_twice} "
                     f"completed twice, {a.claimed_twice} claimed twice, {a.errors} in error, "
                     f"{a.left_open} left open")
    if plot:
        lines.append(f"Plot: {plot}")
    if r.serve_log_lines:
        lines.append(f"serve printed at LOG_LEVEL=WARNING, first lines: {r.serve_log_lines[:3]}")
    lines += [f"- {n}" for n in r.notes]
    if r.server_log:
        lines += ["", f"The server log's errors ({len(r.server_log)} lines kept):", "",
                  *[f"    {ln}" for ln in r.server_log]]
    return lines


def svg(r: Result) -> str:
    """Five panels over the minutes: done/s and backlog; pickup p50/p99; CPU per
    task; sizes; dead tuples and RSS. Each panel has its own scale."""
    ms = r.minutes
    panels: list[tuple[str, list[tuple[str, str, list[float | None]]]]] = [
        ("tasks/s done, backlog (max)", [
            ("done/s", "#1f77b4", [m.done_rate for m in ms]),
            ("backlog", "#d62728", [float(m.backlog_max) for m in ms])]),
        ("pickup ms", [("p50", "#2ca02c", [m.pct(50) for m in ms]),
                       ("p99", "#d62728", [m.pct(99) for m in ms])]),
        ("CPU us per task", [("serve", "#1f77b4", [m.cpu_per_task_us("serve") for m in ms]),
                             ("PostgreSQL", "#ff7f0e", [m.cpu_per_task_us("pg") for m in ms])]),
        ("MB", [("heap", "#1f77b4", [m.heap_mb for m in ms]),
                ("TOAST", "#9467bd", [m.toast_mb for m in ms]),
                ("indexes", "#ff7f0e", [m.index_total_mb for m in ms]),
                ("serve RSS (sum)", "#2ca02c", [sum(m.rss_mb) for m in ms])]),
        ("dead tuples, autovacuum runs x 10,000", [
            ("dead", "#d62728", [float(m.dead) for m in ms]),
            ("autovacuums", "#7f7f7f", [m.autovacuums * 10_000.0 for m in ms])]),
    ]
    width, ph, left, top = 900, 170, 70, 30
    height = top + len(panels) * (ph + 40)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">taskworker soak, {r.started}: '
           f'{r.options.rate:,.0f} tasks/s, {r.options.processes} x serve W={r.options.workers}'
           '</text>']
    n = max(len(ms), 2)
    pw = width - left - 30

    def x(i: int) -> float:
        return left + pw * i / (n - 1)
    for k, (title, series) in enumerate(panels):
        y0 = top + k * (ph + 40) + 15
        vals = [v for _, _, s in series for v in s if v is not None]
        hi = max(vals, default=1.0) or 1.0
        out.append(f'<text x="{left}" y="{y0 - 4}">{title}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" '
                   'stroke="#999"/>')
        for frac in (0.0, 0.5, 1.0):
            yy = y0 + ph - frac * ph
            out.append(f'<text x="{left - 5}" y="{yy + 4}" text-anchor="end">'
                       f'{hi * frac:,.{0 if hi >= 100 else 1}f}</text>')
        for i in range(0, len(ms), 5):
            out.append(f'<text x="{x(i)}" y="{y0 + ph + 12}" text-anchor="middle">'
                       f'{ms[i].index}</text>')
        lx = left + 10
        for label, color, s in series:
            pts = " ".join(f"{x(i):.1f},{y0 + ph - (v / hi) * ph:.1f}"
                           for i, v in enumerate(s) if v is not None)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                       f'points="{pts}"/>')
            out.append(f'<text x="{lx}" y="{y0 + 12}" fill="{color}">{label}</text>')
            lx += 8 * len(label) + 20
    for m in ms:
        if m.events:
            xx = x(m.index - 1)
            out.append(f'<line x1="{xx}" y1="{top}" x2="{xx}" y2="{height - 20}" '
                       'stroke="#ccc" stroke-dasharray="3,3"/>')
            out.append(f'<text x="{xx + 2}" y="{height - 8}" fill="#666">'
                       f'{", ".join(m.events)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --- command line

def add_options(ap: argparse._ActionsContainer, prefix: str = "") -> None:
    d = Options()
    ap.add_argument(f"--{prefix}minutes", type=float, default=d.minutes,
                    help=f"length of the feed (default {d.minutes:g})")
    ap.add_argument(f"--{prefix}rate", type=float, default=d.rate,
                    help=f"tasks per second fed (default {d.rate:,.0f})")
    ap.add_argument(f"--{prefix}batch", type=int, default=d.batch,
                    help=f"rows per commit (default {d.batch})")
    ap.add_argument(f"--{prefix}prune-after", default=d.prune_after,
                    help=f"serve's PRUNE_AFTER (default {d.prune_after})")
    ap.add_argument(f"--{prefix}saturation-at", default="", metavar="M,...",
                    help="saturation probes after these minutes (full run: 5,28)")
    ap.add_argument(f"--{prefix}saturation-backlog", type=int, default=d.saturation_backlog,
                    help=f"tasks per saturation probe (default {d.saturation_backlog:,})")
    ap.add_argument(f"--{prefix}long-transaction", default="", metavar="START,MINUTES",
                    help="hold a transaction open from minute START for MINUTES")
    ap.add_argument(f"--{prefix}freeze-at", type=float, metavar="M",
                    help="VACUUM FREEZE tasks after minute M")
    ap.add_argument(f"--{prefix}audit", action="store_true",
                    help="count claims and completions per task (row triggers)")
    ap.add_argument(f"--{prefix}tasks-storage", default="", metavar="K=V,...",
                    help="ALTER TABLE tasks SET (K=V,...) before the start, e.g. "
                         "autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=20000")
    ap.add_argument(f"--{prefix}history", type=int, default=0, metavar="N",
                    help="N finished rows in the table before serve starts (item 3: "
                         "10000000), pruned under the feed")
    ap.add_argument(f"--{prefix}plot", metavar="FILE.svg", help="write the plot there")


def options_from(args: argparse.Namespace, prefix: str = "") -> Options:
    def get(name: str) -> Any:
        return getattr(args, (prefix + name).replace("-", "_"))
    lt = [float(v) for v in get("long_transaction").split(",") if v.strip()]
    if lt and len(lt) != 2:
        raise SystemExit("--long-transaction: START,MINUTES")
    return Options(minutes=get("minutes"), rate=get("rate"), batch=get("batch"),
                   prune_after=get("prune_after"),
                   saturation_at=tuple(float(v) for v in get("saturation_at").split(",")
                                       if v.strip()),
                   saturation_backlog=get("saturation_backlog"),
                   long_transaction=(lt[0], lt[1]) if lt else None,
                   freeze_at=get("freeze_at"), audit=get("audit"), history=get("history"),
                   tasks_storage=get("tasks_storage"))


def write_outputs(r: Result, plot: str | None, markdown: str | None) -> list[str]:
    if plot:
        with open(plot, "w") as fh:
            fh.write(svg(r) + "\n")
    lines = report(r, plot)
    if markdown:
        with open(markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(ap)
    ap.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def say(message: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)
    try:
        result = run(options_from(args), say)
    finally:
        processes.stop_all()
        processes.remove_workdir()
    print("\n".join(write_outputs(result, args.plot, args.markdown)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
