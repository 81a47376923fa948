"""Pickup latency while the process is busy (issue 13, items 3 and 4), and what
the insert trigger's NOTIFY costs the producers.

  no-op      one serve at WORKER_COUNT=100 (FETCH_LIMIT unset) running no-op tasks
             that another process (benchmarks/feeder.py) inserts at 10,000/s in
             commits of 100 rows
  1 s I/O    one serve at WORKER_COUNT=10,000 running tasks that sleep 1 s
             cooperatively, fed at 9,000/s in commits of 100 (nine tenths of what
             its workers can run: a task that waits for a free worker measures the
             load, not the pickup)

Meanwhile the probe inserts single tasks (one row per commit, 50/s) and a row
trigger on this benchmark's own database notes when each probe row is claimed:
pickup = claim time - the probe insert's commit (the same machine's clock, as
in latency.py). The process's rate is the feed's tasks done per second over the
probe window, from the rows' updated_at.

notify: one-row commits per second from 4 pgbench clients, interleaved: with the
insert trigger while a process sleeps (it notifies: NOTIFY takes a lock at commit
that every notifying transaction of the cluster queues for), with the trigger
while every process is busy (migration 018: it looks for a sleeper and sends
nothing), and with the trigger disabled.
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import latency, rawsql
from . import taskworker_runs as tw
from .databases import connect
from .processes import BenchError, Proc, run

PROBE_RATE = 50.0  # probe inserts per second
PROBE_INSERT = "INSERT INTO tasks (payload) VALUES ('probe') RETURNING id"
WARM_UP = 2.0  # seconds of feed before the probe starts


@dataclass(frozen=True)
class Case:
    name: str
    workers: int
    handler: str
    feed_rate: float  # tasks per second
    feed_batch: int  # rows per commit
    target_ms: float  # pickup p99 the issue asks for
    target_rate: float  # tasks/s the process must sustain meanwhile


def cases() -> list[Case]:
    return [Case("no-op, WORKER_COUNT=100, fed 10,000/s in commits of 100", 100, tw.NOOP,
                 10_000, 100, 5.0, 10_000),
            Case("1 s I/O, WORKER_COUNT=10,000, fed 9,000/s in commits of 100", 10_000,
                 "benchmarks.iobound:sleep_1s", 9_000, 100, 20.0, 9_000 * 0.9)]


@dataclass
class UnderLoad:
    case: Case
    pickup: latency.Latency | None = None
    fed: float | None = None  # tasks/s the feeder achieved
    rate: float | None = None  # tasks done per second over the probe window
    rss_kb: int | None = None
    notes: list[str] = field(default_factory=list)


def install_probe_clock(conn) -> None:  # type: ignore[no-untyped-def]
    """latency.py's claim clock, for the probe rows only (the feed's rows would
    add a trigger insert to every claim)."""
    latency.install_claim_clock(conn, "tasks", "pending", "in_progress")
    with conn.cursor() as cur:
        cur.execute("DROP TRIGGER bench_record_claim ON tasks")
        cur.execute("""
            CREATE TRIGGER bench_record_claim AFTER UPDATE ON tasks FOR EACH ROW
            WHEN (OLD.status = 'pending' AND NEW.status = 'in_progress'
                  AND NEW.payload = 'probe')
            EXECUTE FUNCTION bench_record_claim()""")


def measure(url: str, case: Case, seconds: float) -> UnderLoad:
    result = UnderLoad(case)
    conn = connect(url)
    procs: list[Proc] = []
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE tasks")
            cur.execute("DROP TABLE IF EXISTS bench_claims CASCADE")
            cur.execute("DROP FUNCTION IF EXISTS bench_record_claim() CASCADE")
        install_probe_clock(conn)
        serve = tw.start_serve(url, case.workers, None, handler=case.handler)  # type: ignore[arg-type]
        procs.append(serve)
        if not tw.wait_ready(url, procs, timeout=30):
            result.notes.append("LISTEN connection not seen within 30 s of start")
        feeder = Proc("feeder", [sys.executable, "-m", "benchmarks.feeder", url,
                                 str(case.feed_rate), str(case.feed_batch),
                                 str(WARM_UP + seconds + 1)],
                      tw.env_for(url), cwd=str(tw.REPO))
        procs.append(feeder)
        time.sleep(WARM_UP)
        started = time.time()
        result.pickup = latency.steady(conn, PROBE_INSERT, PROBE_RATE, seconds)
        ended = time.time()
        if feeder.wait(30) is None:
            result.notes.append("feeder did not finish")
        out = feeder.output().strip()
        result.fed = float(out.splitlines()[-1]) if out else None
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM tasks WHERE status = 'done' AND payload = 'load' "
                        "AND updated_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)",
                        (started, ended))
            result.rate = cur.fetchone()[0] / (ended - started)
        result.rss_kb = serve.vm_hwm_kb()
    finally:
        for p in procs:
            p.stop()
        conn.close()
    if result.pickup and result.pickup.missing:
        result.notes.append(f"{result.pickup.missing} probe tasks not claimed")
    return result


@dataclass
class NotifyCap:
    with_notify: list[float] = field(default_factory=list)  # one-row commits/s, one asleep
    busy: list[float] = field(default_factory=list)  # trigger on, every process busy
    without: list[float] = field(default_factory=list)  # trigger off


MODES = ("asleep", "busy", "off")


def notify_cap(pgbench: str, url: str, rounds: int, seconds: float = 3.0) -> NotifyCap:
    """One-row commits/s from 4 pgbench clients: the trigger with a process
    asleep, with every process busy, and disabled, interleaved (the order
    rotated each round)."""
    script = rawsql.script_file("one_row.sql", "INSERT INTO tasks (payload) VALUES ('one');\n")
    cap = NotifyCap()
    runs = {"asleep": cap.with_notify, "busy": cap.busy, "off": cap.without}
    conn = connect(url)
    try:
        with conn.cursor() as cur:  # the processes the trigger looks at: one, as told
            cur.execute("DELETE FROM taskworker_processes")
            cur.execute("INSERT INTO taskworker_processes (holder, host, pid, tasks, "
                        "default_handler, lease_seconds) VALUES ('bench', 'h', 1, '{}', "
                        "true, 30)")
        for r in range(rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:
                with conn.cursor() as cur:
                    cur.execute("TRUNCATE tasks")
                    cur.execute(f"ALTER TABLE tasks {'DISABLE' if mode == 'off' else 'ENABLE'} "
                                "TRIGGER tasks_notify_insert")
                    cur.execute("UPDATE taskworker_processes SET asleep = %s",
                                (mode == "asleep",))
                    cur.execute("CHECKPOINT")
                code, out = run("pgbench", [pgbench, "-n", "-f", script, "-c", "4", "-j", "2",
                                            "-T", str(int(seconds)), url], dict(os.environ),
                                timeout=60)
                m = re.search(r"tps = ([\d.]+) \(without", out)
                if code != 0 or not m:
                    raise BenchError(f"pgbench exited {code}: {out.strip()[-300:]}")
                runs[mode].append(float(m.group(1)))
    finally:
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_notify_insert")
            cur.execute("TRUNCATE tasks")
            cur.execute("DELETE FROM taskworker_processes")
        conn.close()
    return cap


def report(runs: list[UnderLoad], cap: NotifyCap | None) -> list[str]:
    lines = ["Pickup under load (benchmarks/underload.py): probe tasks inserted one per "
             f"commit at {PROBE_RATE:.0f}/s while another process feeds the load", "",
             "| load | pickup p50 | p99 | max | target p99 | tasks/s done | fed/s | "
             "peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        p = r.pickup

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} ms"
        lines.append(
            f"| {r.case.name} | {ms(p and p.pct(50))} | {ms(p and p.pct(99))} | "
            f"{ms(p and max(p.values, default=None))} | < {r.case.target_ms:g} ms | "
            f"{r.rate or 0:,.0f} | {r.fed or 0:,.0f} | "
            f"{(r.rss_kb or 0) / 1024:.0f} |")
    if cap and cap.with_notify and cap.without:
        on, off = statistics.median(cap.with_notify), statistics.median(cap.without)
        lines += ["", f"One-row commits, 4 pgbench clients: {on:,.0f}/s with the insert "
                  f"trigger while a process sleeps (it notifies; {_span(cap.with_notify)}), "
                  f"{off:,.0f}/s with the trigger disabled ({_span(cap.without)}): "
                  f"{on / off:.2f}x"]
        if cap.busy:
            busy = statistics.median(cap.busy)
            lines.append(f"With the trigger while every process is busy (no NOTIFY): "
                         f"{busy:,.0f}/s ({_span(cap.busy)}): {busy / off:.2f}x of the "
                         f"trigger disabled, {busy / on:.2f}x of the notifying trigger")
    for r in runs:
        lines += [f"- {r.case.name}: {n}" for n in r.notes]
    return lines


def _span(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}, {len(values)} runs"


def phase(url: Callable[[str], str], pgbench: str | None, quick: bool,
          say: Callable[[str], None]) -> tuple[list[UnderLoad], NotifyCap | None]:
    seconds = 5.0 if quick else 10.0
    runs = []
    for case in cases():
        say(f"under load: {case.name}, probe {seconds:.0f} s")
        runs.append(measure(url("underload"), case, seconds))
    cap = None
    if pgbench:
        say("under load: one-row commits with and without the NOTIFY trigger")
        cap = notify_cap(pgbench, url("notify"), 2 if quick else 4)
    return runs, cap
