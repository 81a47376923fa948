"""What one benchmark run does: the plan (sizes, settings, repeats) and the
phases, each filling the Bench with raw results; report.py turns them into the
table.
"""
from __future__ import annotations

import datetime
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    backlog,
    baseline,
    bound,
    calls,
    claimcost,
    claims,
    dashboard,
    defaults,
    history,
    minimal,
    pgqueuer_runs,
    producers,
    profiling,
    rawsql,
    rivals,
    roundtrip,
    scaling,
    soak,
    underload,
)
from . import rival_systems as rs
from . import taskworker_runs as tw
from .databases import Server
from .processes import BenchError

PHASES = ("throughput", "pgqueuer", "rawsql", "processes", "finished-rows", "rss", "latency",
          "hosts", "claims", "baseline", "dashboard", "defaults", "rivals", "roundtrip",
          "underload", "backlog", "calls", "bound", "producers", "minimal")
# Phases run only when --only names them (too long for the default run).
OPTIONAL_PHASES = ("soak", "history")
MAIN_SETTING = (100, 100)  # WORKER_COUNT, FETCH_LIMIT for rows that use one setting


@dataclass
class Plan:
    sizes: list[int]
    settings: list[tuple[int, int]]
    repeats: int  # rounds of the 20,000-task comparisons (medians reported)
    repeats_large: int  # rounds at the larger sizes
    pgq_batches: list[int]
    raw_batches: list[int]  # pgbench runs with 2 clients, at each of `sizes`
    processes: list[int]
    process_n: int
    finished_rows: int
    finished_n: int
    finished_repeats: int
    rss_workers: list[int]
    latency_rate: float = 200.0
    latency_seconds: float = 5.0
    latency_singles: int = 20
    latency_pause: float = 0.3
    hosts: list[int] = field(default_factory=lambda: [1, 2, 3])
    hosts_io_n: int = 15_000  # I/O-bound tasks per point: 7.5 s at 1 host, 2.5 s at 3
    hosts_noop_n: int = 50_000
    hosts_rounds: int = 3
    baseline_n: int = 50_000  # tasks per run of the baseline phase (at least 5 rounds)


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(sizes=[20_000], settings=[(10, 100), (100, 100)], repeats=3,
                    repeats_large=1, pgq_batches=[10, 100], raw_batches=[10, 100],
                    processes=[2, 4],
                    process_n=20_000, finished_rows=1_000_000, finished_n=20_000,
                    finished_repeats=2, rss_workers=[5, 100, 1000],
                    hosts_io_n=6_000, hosts_noop_n=20_000, baseline_n=20_000)
    return Plan(sizes=[20_000, 200_000], settings=[(10, 100), (100, 100), (100, 1000)],
                repeats=5, repeats_large=2, pgq_batches=[10, 100, 1000],
                raw_batches=[10, 100],
                processes=[2, 4], process_n=200_000, finished_rows=1_000_000,
                finished_n=100_000, finished_repeats=4, rss_workers=[5, 100, 1000])


@dataclass
class Bench:
    args: Any  # argparse.Namespace of run.py
    plan: Plan
    server: Server
    dbs: dict[str, str] = field(default_factory=dict)
    tw: dict[tuple[int, int, int], list[tw.Drain]] = field(default_factory=dict)  # (n, w, f)
    pgq: dict[tuple[int, int], list[pgqueuer_runs.Drain]] = field(default_factory=dict)
    raw: dict[tuple[int, int], list[rawsql.Raw]] = field(default_factory=dict)  # (n, batch)
    multi: dict[int, tw.Drain] = field(default_factory=dict)
    finished: dict[str, list[tw.Drain]] = field(default_factory=dict)  # "empty" / "big"
    rss: dict[int, tw.Drain] = field(default_factory=dict)
    latency: dict[str, tuple] = field(default_factory=dict)  # system -> (steady, single)
    profile: profiling.Profile | None = None
    scaling: scaling.Scaling | None = None
    claims: claims.Claims | None = None
    baseline: baseline.Baseline | None = None
    dashboard: dashboard.Result | None = None
    defaults: defaults.Defaults | None = None
    rivals: rivals.Rivals | None = None
    roundtrip: roundtrip.RoundTrip | None = None
    calls: calls.Calls | None = None
    bound: bound.Bound | None = None
    producers: producers.Producers | None = None
    minimal: minimal.Minimal | None = None
    underload: tuple[list[underload.UnderLoad], underload.NotifyCap | None] | None = None
    backlog: backlog.Backlog | None = None
    soak: soak.Result | None = None
    history: history.History | None = None
    notes: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    def db(self, purpose: str, schema: str | None = "taskworker") -> str:
        """A database for `purpose`, made once per run (migrated, pgqueuer-installed, or
        with schema None empty)."""
        if purpose not in self.dbs:
            url = self.server.create(purpose)
            if schema == "taskworker":
                tw.migrate(url)
            elif schema == "pgqueuer":
                pgqueuer_runs.install(url)
            self.dbs[purpose] = url
        return self.dbs[purpose]

    def note_drain(self, label: str, d: tw.Drain | pgqueuer_runs.Drain) -> None:
        for n in d.notes:
            self.notes.append(f"{label}: {n}")

    # --- best figures, for ratios

    def tw_best(self, n: int) -> tuple[tuple[int, int], float | None]:
        best: tuple[tuple[int, int], float | None] = (MAIN_SETTING, None)
        for (size, w, f), runs in self.tw.items():
            rate = median_rate(runs)
            if size == n and rate is not None and (best[1] is None or rate > best[1]):
                best = ((w, f), rate)
        return best

    def pgq_best(self, n: int) -> tuple[int | None, float | None]:
        best: tuple[int | None, float | None] = (None, None)
        for (size, batch), runs in self.pgq.items():
            rate = median_rate(runs)
            if size == n and rate is not None and (best[1] is None or rate > best[1]):
                best = (batch, rate)
        if best[1] is None and n != 20_000:
            return self.pgq_best(20_000)
        return best

    def raw100(self, n: int) -> float | None:
        """Raw SQL in batches of 100 on `n` tasks (else on 20,000)."""
        return median_rate(self.raw.get((n, 100)) or self.raw.get((20_000, 100), []))


def median_rate(runs: list) -> float | None:
    rates = [r.rate for r in runs if r.rate is not None]
    return statistics.median(rates) if rates else None


def mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


COMPARED = ("throughput", "pgqueuer", "rawsql")


def phase_compare(b: Bench) -> None:
    """taskworker, pgqueuer and raw SQL throughput, interleaved round by round (and
    rotated within a round) so that other load on the machine falls on all alike."""
    want = [p for p in COMPARED if p in b.args.phases]
    failed: set[str] = set()
    pgbench = rawsql.find_pgbench(b.args.pgbench)
    if "rawsql" in want and not pgbench:
        b.notes.append("raw SQL skipped: pgbench not found (PATH, /usr/lib/postgresql/*/bin); "
                       "use --pgbench")
        failed.add("rawsql")
    if "pgqueuer" in want and not pgqueuer_runs.version():
        b.notes.append("pgqueuer skipped: pgqueuer/asyncpg not installed (pip install pgqueuer "
                       "asyncpg, or use tox -e bench)")
        failed.add("pgqueuer")

    def tw_run(n: int, w: int, f: int) -> None:
        d = tw.throughput(b.db("tw"), n, w, f)
        b.tw.setdefault((n, w, f), []).append(d)
        b.note_drain(f"taskworker {n} W={w} F={f}", d)

    def pgq_run(n: int, batch: int) -> None:
        d = pgqueuer_runs.drain(b.db("pgq", schema="pgqueuer"), n, batch)
        b.pgq.setdefault((n, batch), []).append(d)
        b.note_drain(f"pgqueuer {n} batch {batch}", d)

    def raw_run(n: int, batch: int) -> None:
        r = rawsql.claim_complete(pgbench or "pgbench", b.db("raw"), batch, n // (2 * batch))
        b.raw.setdefault((n, batch), []).append(r)
        b.notes.extend(f"raw SQL batch {batch}: {n}" for n in r.notes)

    for n in b.plan.sizes:
        rounds = b.plan.repeats if n <= 20_000 else b.plan.repeats_large
        for r in range(rounds):
            jobs: list[tuple[str, str, Callable[[], None]]] = []
            if "throughput" in want:
                for w, f in b.plan.settings:
                    jobs.append(("throughput", f"taskworker: {n:,} tasks, W={w} F={f}",
                                 lambda n=n, w=w, f=f: tw_run(n, w, f)))
            if "pgqueuer" in want:
                best = b.pgq_best(20_000)[0] or max(b.plan.pgq_batches)
                for batch in (b.plan.pgq_batches if n <= 20_000 else [best]):
                    jobs.append(("pgqueuer", f"pgqueuer: {n:,} jobs, batch {batch}",
                                 lambda n=n, batch=batch: pgq_run(n, batch)))
            if "rawsql" in want:
                for batch in b.plan.raw_batches:
                    jobs.append(("rawsql", f"raw SQL: pgbench, {n:,} tasks, batch {batch}",
                                 lambda n=n, batch=batch: raw_run(n, batch)))
            jobs = jobs[r % len(jobs):] + jobs[:r % len(jobs)] if jobs else jobs
            for system, label, run_job in jobs:
                if system in failed:
                    continue
                b.say(f"{label} (round {r + 1}/{rounds})")
                try:
                    run_job()
                except Exception as exc:  # noqa: BLE001 - the others go on
                    failed.add(system)
                    what = str(exc) if isinstance(exc, BenchError) else \
                        f"{type(exc).__name__}: {exc}"
                    b.notes.append(f"{system} failed, skipped from then on: {what}")
                    b.say(f"{system} failed: {what}")


def phase_processes(b: Bench) -> None:
    url = b.db("tw")
    n = b.plan.process_n
    (w, f), _ = b.tw_best(n)
    for count in b.plan.processes:
        b.say(f"taskworker: {n:,} tasks, {count} processes, WORKER_COUNT={w} FETCH_LIMIT={f}")
        d = tw.throughput(url, n, w, f, processes=count)
        b.multi[count] = d
        b.note_drain(f"taskworker {count} processes", d)


def phase_finished_rows(b: Bench) -> None:
    empty = b.db("tw")
    big = b.dbs.get("big")
    if big is None:
        big = b.db("big")
        b.say(f"taskworker: adding {b.plan.finished_rows:,} done rows")
        tw.add_finished_rows(big, b.plan.finished_rows)
    w, f = MAIN_SETTING
    n = b.plan.finished_n
    for i in range(b.plan.finished_repeats):
        for label, url, truncate in (("empty", empty, True), ("big", big, False)):
            b.say(f"taskworker: {n:,} tasks, table {label} ({i + 1}/{b.plan.finished_repeats})")
            d = tw.throughput(url, n, w, f, truncate=truncate, vacuum=True)
            b.finished.setdefault(label, []).append(d)
            b.note_drain(f"taskworker {label} table", d)


def phase_rss(b: Bench) -> None:
    url = b.db("tw")
    for workers in b.plan.rss_workers:
        if (20_000, workers, 100) in b.tw:
            b.rss[workers] = b.tw[(20_000, workers, 100)][0]
            continue
        b.say(f"taskworker: 20,000 tasks, WORKER_COUNT={workers} (peak RSS)")
        d = tw.throughput(url, 20_000, workers, 100)
        b.rss[workers] = d
        b.note_drain(f"taskworker RSS W={workers}", d)


def phase_latency(b: Bench) -> None:
    p = b.plan
    w, f = MAIN_SETTING
    b.say(f"taskworker: pickup latency, {p.latency_singles} single tasks, then "
          f"{p.latency_rate:.0f}/s for {p.latency_seconds:.0f} s")
    steady, single, notes = tw.pickup(b.db("lat"), w, f, p.latency_rate, p.latency_seconds,
                                      p.latency_singles, p.latency_pause)
    b.latency["taskworker"] = (steady, single)
    b.notes.extend(f"taskworker latency: {n}" for n in notes)
    if pgqueuer_runs.version():
        batch, _ = b.pgq_best(20_000)
        batch = batch or 10
        b.say(f"pgqueuer: pickup latency (batch {batch})")
        steady, single, notes = pgqueuer_runs.pickup(
            b.db("pgqlat", schema="pgqueuer"), batch, p.latency_rate, p.latency_seconds,
            p.latency_singles, p.latency_pause)
        b.latency["pgqueuer"] = (steady, single)
        b.notes.extend(f"pgqueuer latency: {n}" for n in notes)


def phase_hosts(b: Bench) -> None:
    """1, 2 and 3 hosts (network namespaces), I/O-bound tasks direct and through
    PgBouncer, no-op tasks direct (benchmarks/scaling.py)."""
    p = b.plan
    b.scaling = scaling.Scaling(io_n=p.hosts_io_n, noop_n=p.hosts_noop_n)
    if not scaling.measure(b.scaling, b.say, b.notes, p.hosts_rounds, p.hosts):
        b.scaling = None


def phase_profile(b: Bench) -> None:
    w, f = MAIN_SETTING
    n = max(200_000, int(b.args.py_spy * 40_000))  # enough work to outlast the sampling
    recorder = profiling.Recorder(b.args.py_spy)
    b.say(f"taskworker: {n:,} tasks under py-spy for {b.args.py_spy:.0f} s")
    d = tw.throughput(b.db("tw"), n, w, f, on_start=recorder.start)
    b.profile = recorder.finish()
    b.notes.append(f"py-spy run: {d.rate or 0:,.0f} tasks/s while sampled "
                   f"(WORKER_COUNT={w} FETCH_LIMIT={f}, {n:,} tasks)")
    b.note_drain("taskworker py-spy run", d)




def phase_claims(b: Bench) -> None:
    """The claim statement alone per backlog shape, part 7 vs part 3 (claims.py)."""
    b.claims = claims.run_claims(b.db("claims"), b.db("claims_fresh"), b.plan.repeats, b.say)
    b.notes.extend(f"claims: {n}" for n in b.claims.notes)


def phase_baseline(b: Bench) -> None:
    """No-op throughput of this code vs an older commit's (baseline.py)."""
    b.baseline = baseline.measure(b.db("baseline"), b.args.baseline, b.plan.baseline_n,
                                  max(5, b.plan.repeats), b.say, b.notes)


def phase_dashboard(b: Bench) -> None:
    """Every page at 100 requests/s on 1,000,000 tasks; 008's cost (dashboard.py)."""
    b.dashboard = dashboard.run(b.db("dashboard"), b.db("dashboard_hot"), b.say)
    b.notes.extend(f"dashboard: {n}" for n in b.dashboard.notes)


def phase_defaults(b: Bench) -> None:
    """FETCH_LIMIT unset against set values, no-op and I/O-bound (defaults.py)."""
    b.defaults = defaults.measure(b.db("defaults"), b.args.quick, 1 if b.args.quick else 3,
                                  b.say, b.notes)


def phase_rivals(b: Bench) -> None:
    """The same I/O-bound work through taskworker, Celery, pgqueuer and procrastinate,
    interleaved round by round (rivals.py, rival_systems.py)."""
    work = rivals.workload(b.args.quick)
    c = work.concurrency
    prefix = f"twbench_{b.server.run_id}_"
    systems: list[rs.System] = [
        rs.Taskworker("taskworker", c, database=lambda: b.db("rivals")),
        rs.Celery("Celery, RabbitMQ", c, broker=rs.AMQP_URL, prefix=prefix + "1_"),
        rs.Celery("Celery, RabbitMQ, Redis results", c, broker=rs.AMQP_URL,
                  backend=rs.REDIS_URL, prefix=prefix + "2_"),
        rs.Celery("Celery, Redis", c, broker=rs.REDIS_URL, prefix=prefix + "3_"),
        rs.Celery("Celery, Redis, Redis results", c, broker=rs.REDIS_URL,
                  backend=rs.REDIS_URL, prefix=prefix + "4_"),
        rs.Pgqueuer("pgqueuer", c, database=lambda: b.db("rivals_pgq", schema="pgqueuer")),
        rs.Procrastinate("procrastinate", c, database=lambda: b.db("rivals_proc", schema=None)),
    ]
    b.rivals = rivals.measure(systems, work, b.say, b.notes)
    b.rivals.servers = rivals.server_versions()


def phase_roundtrip(b: Bench) -> None:
    """One default-sized serve against raw SQL at batch 100 and 20 (roundtrip.py)."""
    pgbench = rawsql.find_pgbench(b.args.pgbench)
    if not pgbench:
        b.notes.append("roundtrip skipped: pgbench not found")
        return
    n, rounds = (20_000, 3) if b.args.quick else (100_000, 5)
    this_code = baseline.work_tree()
    against = _older(b, b.args.against) if b.args.against else None
    limit_against = _older(b, b.args.limit_against) if b.args.limit_against else None
    b.roundtrip = roundtrip.measure(b.db("roundtrip"), b.db("roundtrip_raw"), pgbench,
                                    b.args.tasks or n, b.args.rounds or rounds, b.say,
                                    against, limit_against, this_code, b.args.quick)


def phase_calls(b: Bench) -> None:
    """Calls with JSON arguments against text payloads, W=100 and W=20 (calls.py)."""
    n, rounds = (20_000, 3) if b.args.quick else (100_000, 5)
    b.calls = calls.measure(b.db("calls"), b.args.tasks or n, b.args.rounds or rounds, b.say,
                            baseline.work_tree())


def phase_bound(b: Bench) -> None:
    """A write through the task's bound transaction against the same write committed
    apart, WORKER_COUNT=20 (bound.py)."""
    n, rounds = (5_000, 2) if b.args.quick else (20_000, 3)
    b.bound = bound.measure(b.db("bound"), b.args.tasks or n, b.args.rounds or rounds, b.say,
                            baseline.work_tree())


def phase_producers(b: Bench) -> None:
    """Enqueue throughput by producer against a plain INSERT (producers.py)."""
    singles, rounds = (2_000, 3) if b.args.quick else (10_000, 3)
    singles = b.args.tasks or singles  # (--tasks N: N one per transaction, 10 N in a batch)
    b.producers = producers.measure(b.db("producers"), singles, 10 * singles,
                                    b.args.rounds or rounds, b.say)


def phase_minimal(b: Bench) -> None:
    """taskworker against a minimal queue's statements run by pgbench, and the busy
    statement's cost per task by feature (minimal.py, claimcost.py)."""
    pgbench = rawsql.find_pgbench(b.args.pgbench)
    if not pgbench:
        b.notes.append("minimal skipped: pgbench not found")
        return
    n, rounds = (20_000, 3) if b.args.quick else (100_000, 5)
    rounds = b.args.rounds or rounds
    cost_url = b.db("minimal_cost")
    b.minimal = minimal.measure(
        b.db("minimal_tw"), b.db("minimal_raw", schema=None), pgbench, b.args.tasks or n,
        rounds, b.say, baseline.work_tree(),
        cost=lambda: claimcost.measure(cost_url, b.say, rounds=min(rounds, 3),
                                       iterations=30 if b.args.quick else claimcost.ITERATIONS))


def _older(b: Bench, ref: str) -> roundtrip.Code:
    """Commit `ref`'s serve: its tree exported (baseline.py), on a database of its own
    that its own `taskworker migrate` made (an older serve refuses a schema missing its
    migrations; a newer schema's triggers and indexes would not be what it ran on)."""
    commit = baseline.commit_of(ref)
    tree = baseline.export(commit)
    path = baseline.pythonpath(tree)
    purpose = f"roundtrip_{commit}"
    if purpose not in b.dbs:
        b.say(f"round trip: git {commit}, taskworker migrate of its own")
        url = b.db(purpose, schema=None)
        tw.migrate(url, pythonpath=path)
    ours, theirs = (sorted(p.name for p in Path(root, "migrations").glob("*.sql"))
                    for root in (tw.REPO, tree))
    if ours == theirs:
        schema = "the same migrations as this code"
    else:
        schema = (f"its own migrations ({len(theirs)}, last {theirs[-1] if theirs else 'none'}"
                  f"; this code has {len(ours)}, last {ours[-1] if ours else 'none'})")
    return roundtrip.Code(commit, b.dbs[purpose], path,
                          f"({baseline.describe(commit)}): `git archive`, its serve on a "
                          f"database made by its own `taskworker migrate`: {schema}")


def phase_underload(b: Bench) -> None:
    """Pickup latency while a process is busy; the NOTIFY trigger's cost (underload.py)."""
    b.underload = underload.phase(b.db, rawsql.find_pgbench(b.args.pgbench), b.args.quick,
                                  b.say)


def phase_backlog(b: Bench) -> None:
    """50,000 one-second tasks pending before one serve with WORKER_COUNT=10000
    starts: the drain's rate against its ideal, and peak RSS (backlog.py)."""
    n = backlog.TASKS // 2 if b.args.quick else backlog.TASKS
    b.backlog = backlog.measure(b.db("backlog"), 2 if b.args.quick else 3,
                                {"this code": None}, b.say, n=n)


def phase_soak(b: Bench) -> None:
    """Hours of steady load on a throwaway cluster with autovacuum on, per minute
    (soak.py): its own cluster, not --database-url's server."""
    b.soak = soak.run(soak.options_from(b.args, "soak_"), b.say)
    if b.args.soak_plot:
        with open(b.args.soak_plot, "w") as fh:
            fh.write(soak.svg(b.soak) + "\n")


def phase_history(b: Bench) -> None:
    """10,000,000 finished rows kept against an empty table (history.py): throughput,
    claim cost and the dashboard's p95, interleaved rounds."""
    b.history = history.measure({name: b.db(f"history_{name}") for name in history.DATABASES},
                                history.options_from(b.args, "history_"), b.say)
