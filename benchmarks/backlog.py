"""A backlog drained by ten thousand workers (part 20, item 3): 50,000 tasks that
each sleep 1 s cooperatively are already pending when one `serve` with
WORKER_COUNT=10000 (FETCH_LIMIT unset) starts, the shape of a deploy, an outage
or a bulk import (the fed run beside it, underload.py, is the steady shape).

The rate is the tasks over the window from the first completion to the last
(rows' updated_at: start-up is outside it). If every worker were busy from the
first second, n / WORKER_COUNT rounds of 1 s would end one second apart: the
ideal is n / (n / WORKER_COUNT - 1) tasks/s (12,500/s for 50,000). Peak RSS is
the process's VmHWM. `codes`: the same run for each code (this checkout, an
older one), interleaved round by round, medians reported.

    python -m benchmarks.backlog URL [ROUNDS] [name=PYTHONPATH ...]
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .databases import connect

HANDLER = "benchmarks.iobound:sleep_1s"
WORKERS = 10_000
TASKS = 50_000
SECONDS = 1.0  # each task's sleep


@dataclass
class Run:
    rate: float | None  # tasks / (last completion - first completion)
    span: float | None
    rss_kb: int | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Backlog:
    n: int = TASKS
    workers: int = WORKERS
    runs: dict[str, list[Run]] = field(default_factory=dict)  # code name -> runs

    @property
    def ideal(self) -> float:
        return self.n / (self.n / self.workers * SECONDS - SECONDS)


def drain(url: str, n: int, workers: int, pythonpath: str | None) -> Run:
    """Insert `n` pending tasks, then start one serve and time the drain."""
    conn = connect(url)
    proc = None
    notes: list[str] = []
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE tasks")
            cur.execute(tw.INSERT_PENDING, (n,))
            cur.execute("ANALYZE tasks")
        proc = tw.start_serve(url, workers, None, handler=HANDLER,  # type: ignore[arg-type]
                              pythonpath=pythonpath)
        deadline = time.monotonic() + 60 + n / 1000
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(tw.ANY_LEFT)
                if not cur.fetchone()[0]:
                    break
                if not proc.alive():
                    notes.append("serve exited")
                    break
                time.sleep(0.1)
            else:
                notes.append("not drained in time")
            rss = proc.vm_hwm_kb()
            cur.execute("SELECT count(*) FILTER (WHERE status = 'done'), "
                        "extract(epoch FROM max(updated_at) - min(updated_at)) "
                        "FROM tasks WHERE status = 'done'")
            done, span = cur.fetchone()
        if done != n:
            notes.append(f"{done} of {n} done")
        span = float(span) if span else None
        return Run(n / span if span else None, span, rss, notes)
    finally:
        if proc is not None:
            proc.stop()
        conn.close()


def measure(url: str, rounds: int, codes: dict[str, str | None],
            say: Callable[[str], None], n: int = TASKS, workers: int = WORKERS) -> Backlog:
    result = Backlog(n, workers)
    names = list(codes)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            say(f"backlog: {name} (round {r + 1}/{rounds})")
            result.runs.setdefault(name, []).append(drain(url, n, workers, codes[name]))
    return result


def report(b: Backlog) -> list[str]:
    lines = [f"A backlog drained (benchmarks/backlog.py): {b.n:,} tasks of a 1 s cooperative "
             f"sleep pending before one serve with WORKER_COUNT={b.workers:,} (FETCH_LIMIT "
             f"unset) starts; rate over first to last completion; ideal {b.ideal:,.0f}/s; "
             "interleaved rounds, medians (each run in brackets)", "",
             "| code | tasks/s | of the ideal | span s | peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, runs in b.runs.items():
        rates = [r.rate for r in runs if r.rate]
        rate = statistics.median(rates) if rates else None
        spans = [r.span for r in runs if r.span]
        rss = max((r.rss_kb or 0) for r in runs) / 1024
        each = ", ".join(f"{v:,.0f}" for v in rates)
        lines.append(f"| {name} | {rate or 0:,.0f} ({each}) | "
                     f"{(rate or 0) / b.ideal:.0%} | "
                     f"{statistics.median(spans) if spans else 0:.2f} | {rss:.0f} |")
    for name, runs in b.runs.items():
        lines += [f"- {name}: {note}" for r in runs for note in r.notes]
    return lines


def main(argv: list[str]) -> int:
    url, rounds = argv[0], int(argv[1]) if len(argv) > 1 else 3
    codes: dict[str, str | None] = {"this checkout": None}
    for arg in argv[2:]:
        name, _, path = arg.partition("=")
        codes[name] = path
    b = measure(url, rounds, codes, lambda s: print(s, file=sys.stderr, flush=True))
    print("\n".join(report(b)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
