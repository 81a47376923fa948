"""Benchmark taskworker against pgqueuer and raw SQL on the local PostgreSQL.

    python -m benchmarks.run [--quick] [--database-url URL] [--markdown FILE]
                             [--only PHASES] [--py-spy SECONDS]
                             [--against REF] [--limit-against REF]
                             [--tasks N] [--rounds N]

One run measures, each in databases of its own (twbench_<run>_<purpose>, dropped
at the end, also on Ctrl+C or failure):
  throughput     no-op tasks/s of one `taskworker serve` at a few WORKER_COUNT/
                 FETCH_LIMIT settings, from 20,000 and 200,000 pending tasks
  pgqueuer       the same no-op work by pgqueuer (asyncpg driver, one process),
                 batch 10 and 100 (full run: also 1000), best batch at 200,000
  rawsql         pgbench running taskworker's own claim and complete statements
                 in batches of 10 and of 100 (2 clients) on the same numbers of tasks
  processes      2 and 4 serve processes together
  finished-rows  100,000 tasks (--quick: 20,000) with 1,000,000 done rows in the
                 table vs an empty table, alternated, median of 4 (--quick: 2)
  rss            peak RSS (VmHWM) of serve at WORKER_COUNT 5, 100 and 1000
  latency        insert-to-claim latency at 200 tasks/s, and single tasks into an
                 idle worker, for taskworker and pgqueuer
  hosts          1, 2 and 3 hosts (network namespaces, one serve each, a throwaway
                 PostgreSQL on their bridge; needs root, else skipped with a note):
                 I/O-bound tasks (50 ms gevent.sleep) direct and through PgBouncer,
                 against the ideal hosts x WORKER_COUNT / 0.05 s, and no-op tasks
                 with the CPU of the server and of the serve processes
  claims         the claim statement alone, ms per claim of 100 and of 10, part 7's
                 (pairs kept, and discovering) vs part 3's, per backlog shape: 100,000
                 pending over 10 queues x 5 priorities (analyzed, and never analyzed),
                 with 1,000,000 done rows, and a skewed backlog of an unserved queue or
                 an unknown task name (benchmarks/claims.py)
  dashboard      every dashboard page at 100 requests/s on 1,000,000 tasks (p50/p95/p99
                 per page), and no-op throughput with and without migration 008's
                 indexes (benchmarks/dashboard.py)
  defaults       FETCH_LIMIT unset (claims sized by the idle workers and the task rate)
                 against set values: no-op at WORKER_COUNT=100, a 50 ms sleep at 500, a
                 1 s sleep at 10,000 (share of the ideal, peak RSS) (benchmarks/defaults.py)
  rivals         the same I/O-bound work (N tasks of a 50 ms cooperative sleep, enqueued
                 first, concurrency 500) through taskworker, Celery (gevent pool; RabbitMQ
                 and Redis brokers, without and with a Redis result backend), pgqueuer and
                 procrastinate: tasks/s against the ideal, ratio to taskworker, worker CPU
                 and peak RSS, 3 interleaved rounds (--quick: 2 of 10,000 tasks: about 2
                 minutes; full: 30,000 tasks, about 7), slow systems cut 12 s (--quick: 4 s)
                 after their first task started (benchmarks/rivals.py)
  roundtrip      one serve at the default settings against raw SQL: WORKER_COUNT=100
                 vs pgbench in batches of 100, WORKER_COUNT=20 (FETCH_LIMIT unset, and
                 20) vs batches of 20; 100,000 tasks, 5 rounds (--quick: 20,000, 3;
                 --tasks N, --rounds N). With --against REF, git REF's serve (exported,
                 on a database its own migrate made) runs the same settings in the same
                 rounds: each code's ratio to raw SQL and the ratio of the two (>= 0.9),
                 and both codes on part 10's I/O-bound shapes, FETCH_LIMIT unset (50 ms
                 x 500 workers, 30,000 tasks; 1 s x 10,000 workers, 40,000 tasks; ratio
                 of medians >= 0.9), and an A/B of FETCH_LIMIT=100 at W=20 and W=100, this
                 code vs git --limit-against REF (default 6ba015e; none: skipped), ratio
                 of medians (>= 1.0): 16 runs a round, about 10 minutes for 5 rounds of
                 100,000 on a quiet 2-core machine, several times that on a loaded one;
                 2 rounds of 10,000 (--tasks 10000 --rounds 2): about 2 minutes
                 (benchmarks/roundtrip.py)
  underload      pickup p50/p99 of single tasks inserted while one serve runs a load fed
                 in commits of 100: 10,000 no-op tasks/s (WORKER_COUNT=100), and 9,000
                 tasks/s that sleep 1 s (WORKER_COUNT=10,000); one-row commits/s with and
                 without the insert trigger's NOTIFY (benchmarks/underload.py)
  backlog        50,000 tasks that sleep 1 s pending before one serve with
                 WORKER_COUNT=10,000 starts: tasks/s from the first to the last
                 completion against the ideal 12,500/s, peak RSS; 3 rounds (--quick:
                 25,000 tasks, 2) (benchmarks/backlog.py)
  calls          no-op tasks called with JSON arguments (rows as bench_call.enqueue(conn,
                 n, key="k") writes them, a small dict returned) against text payloads,
                 one serve at WORKER_COUNT=100 and 20, FETCH_LIMIT unset; 100,000 tasks,
                 5 interleaved rounds (--quick: 20,000, 3; --tasks N, --rounds N), ratio
                 of medians (>= 0.9); the text path against git 5c69215 is the roundtrip
                 phase's --against (benchmarks/calls.py)
  bound          a handler's one-row insert through its task's bound transaction
                 (taskworker.transaction(), exactly once) against the same insert on a
                 connection of its own per run, and on one kept per worker, committed
                 apart; one serve at WORKER_COUNT=20; 20,000 tasks, 3 interleaved rounds
                 (--quick: 5,000, 2; --tasks N, --rounds N) (benchmarks/bound.py)
  producers      enqueue throughput from psycopg2, psycopg 3, SQLAlchemy, Django's
                 connection, psycopg 3 async, SQLAlchemy async and asyncpg: 10,000 tasks
                 one per transaction and 100,000 in one enqueue_many (--quick: 2,000 and
                 20,000; --tasks N: N and 10 N) against a plain INSERT through the same
                 driver, 3 interleaved rounds (--rounds N), ratio of medians (>= 0.8)
                 (benchmarks/producers.py)
  minimal        a minimal queue's two statements (claim 100 or 20 pending ids FOR UPDATE
                 SKIP LOCKED, commit; complete them, commit) on a table of its own, by
                 pgbench at 1, 2, 4 and 8 clients, against taskworker W=100 (FETCH_LIMIT
                 unset) at 1-4 processes and W=20 FETCH_LIMIT=20; 100,000 tasks, 5
                 interleaved rounds (--quick: 20,000, 3; --tasks N, --rounds N), three target
                 ratios; then the busy statement's cost per task against the minimal pair, and
                 by feature (variants of its SQL text), per statement on one connection
                 (benchmarks/minimal.py, benchmarks/claimcost.py)
  baseline       no-op throughput of one serve (W=100 F=100) against the code of git
                 --baseline REF (default 610de36: part 6's code, the claim of part 3),
                 named tasks in 2 queues at 5 priorities, and plain tasks, 5 rounds
                 interleaved, ratio of medians (benchmarks/baseline.py)
Only when --only names it:
  history        10,000,000 finished rows kept (PRUNE_AFTER unset) against an empty
                 table: no-op throughput (100,000 tasks, W=100, FETCH_LIMIT unset),
                 the busy statement's ms per statement of 100, and the dashboard's p95
                 at 100 requests/s; 3 interleaved rounds, ratios of medians (>= 0.9;
                 issue 27, item 3 (a)); --history-rows N etc. (benchmarks/history.py)
With --py-spy N, one extra run (N x 40,000 tasks, at least 200,000) is sampled by
py-spy for N seconds and the top functions are listed.
--quick: 20,000 tasks only, fewer settings, 3 rounds (about 3 minutes, 1.3 of them
the hosts phase, plus 2 for the rivals phase; the full run, 5 rounds at 20,000 and 2 at
200,000 tasks, about 5-6 minutes on 2 cores plus 2.5 for the hosts phase and 7 for the
rivals phase).
Competitors are interleaved round by round, and medians reported, because other
load on a small machine moves single runs by tens of percent.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from collections.abc import Callable

from . import history, processes, profiling, soak
from .databases import Server
from .phases import (
    COMPARED,
    OPTIONAL_PHASES,
    PHASES,
    Bench,
    phase_backlog,
    phase_baseline,
    phase_bound,
    phase_calls,
    phase_claims,
    phase_compare,
    phase_dashboard,
    phase_defaults,
    phase_finished_rows,
    phase_history,
    phase_hosts,
    phase_latency,
    phase_minimal,
    phase_processes,
    phase_producers,
    phase_profile,
    phase_rivals,
    phase_roundtrip,
    phase_rss,
    phase_soak,
    phase_underload,
    plan_for,
)
from .processes import BenchError
from .report import render, source_digest, versions

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
                    help="server to use (a superuser URL; env BENCH_DATABASE_URL; "
                         f"default {DEFAULT_URL})")
    ap.add_argument("--quick", action="store_true",
                    help="20,000 tasks only, fewer settings and rounds")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run (default all: {','.join(PHASES)}; "
                         f"only when named: {','.join(OPTIONAL_PHASES)})")
    ap.add_argument("--py-spy", type=float, default=0, metavar="SECONDS",
                    help="also profile one serve process with py-spy for SECONDS")
    ap.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    ap.add_argument("--pgbench", metavar="PATH", help="pgbench to use (default: PATH, then "
                    "/usr/lib/postgresql/<newest>/bin/pgbench)")
    ap.add_argument("--baseline", default="610de36", metavar="REF",
                    help="the older commit the baseline phase compares with (default 610de36)")
    ap.add_argument("--against", metavar="REF",
                    help="roundtrip phase: also run git REF's serve at the same settings, "
                         "interleaved, and give the ratio of the two codes' ratios to raw SQL")
    ap.add_argument("--limit-against", metavar="REF",
                    help="roundtrip phase: A/B of FETCH_LIMIT=100 at W=20 and W=100 against "
                         "git REF's serve (default with --against: 6ba015e; none: skip)")
    ap.add_argument("--tasks", type=int, metavar="N",
                    help="roundtrip, calls, bound and minimal phases: tasks per run (default "
                         "100,000; --quick 20,000)")
    ap.add_argument("--rounds", type=int, metavar="N",
                    help="roundtrip, calls, bound and minimal phases: interleaved rounds "
                         "(default 5; --quick 3)")
    soak_options = ap.add_argument_group("soak phase (benchmarks/soak.py)")
    soak.add_options(soak_options, prefix="soak-")
    history_options = ap.add_argument_group("history phase (benchmarks/history.py)")
    history.add_options(history_options, prefix="history-")
    ap.add_argument("--keep-files", action="store_true",
                    help="keep the children's logs (printed path) instead of removing them")
    ap.add_argument("--drop-stale", action="store_true",
                    help="drop twbench_* databases left by killed runs, then exit")
    args = ap.parse_args(argv)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES) - set(OPTIONAL_PHASES)
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.limit_against is None:
        args.limit_against = "6ba015e" if args.against else None
    elif args.limit_against.lower() == "none":
        args.limit_against = None
    given = [o for o, v in (("--against", args.against), ("--limit-against", args.limit_against))
             if v]
    if given and "roundtrip" not in args.phases:
        ap.error(f"{', '.join(given)}: options of the roundtrip phase, which --only leaves out")
    given = [o for o, v in (("--tasks", args.tasks), ("--rounds", args.rounds)) if v]
    if given and not {"roundtrip", "calls", "bound", "producers", "minimal"} & set(args.phases):
        ap.error(f"{', '.join(given)}: options of the roundtrip, calls, bound, producers and "
                 "minimal phases, which --only leaves out")
    if any(v is not None and v < 1 for v in (args.tasks, args.rounds)):
        ap.error("--tasks and --rounds must be at least 1")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    server = Server(args.database_url)
    if args.drop_stale:
        for name in server.stale():
            server.drop(name)
            print(f"dropped {name}")
        return 0
    # Also when started in the background (where a shell ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    b = Bench(args, plan_for(args.quick), server)
    stale = server.stale()
    if stale:
        b.notes.append(f"databases left by an earlier killed run: {', '.join(stale)} "
                       "(python -m benchmarks.run --drop-stale)")
    load_start = os.getloadavg()[0]
    source_start = source_digest()
    started = datetime.datetime.now()
    t0 = datetime.datetime.now().timestamp()
    phases: dict[str, Callable[[Bench], None]] = {
        "processes": phase_processes, "finished-rows": phase_finished_rows, "rss": phase_rss,
        "latency": phase_latency, "hosts": phase_hosts,
        "claims": phase_claims, "baseline": phase_baseline, "dashboard": phase_dashboard,
        "defaults": phase_defaults, "rivals": phase_rivals, "roundtrip": phase_roundtrip,
        "underload": phase_underload, "backlog": phase_backlog, "calls": phase_calls,
        "bound": phase_bound, "producers": phase_producers, "minimal": phase_minimal,
        "soak": phase_soak, "history": phase_history}
    steps = [(name, phases[name]) for name in (*PHASES, *OPTIONAL_PHASES)
             if name in phases and name in args.phases]
    if any(p in args.phases for p in COMPARED):
        steps.insert(0, ("/".join(p for p in COMPARED if p in args.phases), phase_compare))
    interrupted = False
    try:
        for name, step in steps:
            try:
                step(b)
            except Exception as exc:  # noqa: BLE001 - one phase failing must not stop the rest
                what = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                b.notes.append(f"phase {name} failed: {what}")
                b.say(f"phase {name} failed: {what}")
        if args.py_spy > 0:
            if profiling.available():
                phase_profile(b)
            else:
                b.notes.append("py-spy not installed: no profile")
    except KeyboardInterrupt:
        interrupted = True
        b.say("interrupted: stopping processes and dropping databases")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        processes.stop_all()
        failed = server.drop_all()
        if not args.keep_files:
            processes.remove_workdir()
        if failed:
            b.say(f"could not drop: {', '.join(failed)} (use --drop-stale)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if source_digest() != source_start:
        b.notes.append(f"taskworker's source changed during the run (sha1 {source_start} at "
                       f"the start, {source_digest()} at the end): figures may mix versions")
    if args.keep_files:
        b.notes.append(f"logs of the child processes kept in {processes.workdir()}")
    info = versions(server)
    info["load average (1 min) at start / end"] = (
        f"{load_start:.2f} / {os.getloadavg()[0]:.2f} (other work on the machine adds noise)")
    text = render(b, started, datetime.datetime.now().timestamp() - t0, info)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
