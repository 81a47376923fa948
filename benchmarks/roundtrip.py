"""One round trip per batch (issue 13, item 1): one default-sized `serve`
against raw SQL, interleaved round by round, medians.

  W=100   WORKER_COUNT=100, FETCH_LIMIT unset, against pgbench running
          taskworker's claim (claim_shares) and complete in batches of 100,
          2 clients (benchmarks/rawsql.py)
  W=20    WORKER_COUNT=20, FETCH_LIMIT unset and FETCH_LIMIT=20 (claims of what
          20 workers run at once), against raw SQL in batches of 20

Targets: W=100 at least 1.0x raw SQL batch 100; W=20 at least 0.8x raw SQL
batch 20. No-op tasks, the same number of tasks for every run.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import rawsql
from . import taskworker_runs as tw


@dataclass(frozen=True)
class Run:
    label: str
    workers: int | None  # None: raw SQL
    fetch_limit: int | None  # taskworker: None is unset; raw SQL: the batch
    batch: int | None = None


RUNS = [Run("taskworker W=100, FETCH_LIMIT unset", 100, None),
        Run("raw SQL, batch 100, 2 clients", None, None, 100),
        Run("taskworker W=20, FETCH_LIMIT unset", 20, None),
        Run("taskworker W=20, FETCH_LIMIT=20", 20, 20),
        Run("raw SQL, batch 20, 2 clients", None, None, 20)]
TARGETS = [("taskworker W=100, FETCH_LIMIT unset", "raw SQL, batch 100, 2 clients", 1.0),
           ("taskworker W=20, FETCH_LIMIT unset", "raw SQL, batch 20, 2 clients", 0.8),
           ("taskworker W=20, FETCH_LIMIT=20", "raw SQL, batch 20, 2 clients", 0.8)]


@dataclass
class RoundTrip:
    n: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, label: str) -> float | None:
        values = self.rates.get(label)
        return statistics.median(values) if values else None


def measure(tw_url: str, raw_url: str, pgbench: str, n: int, rounds: int,
            say: Callable[[str], None]) -> RoundTrip:
    result = RoundTrip(n)
    for r in range(rounds):
        order = RUNS[r % len(RUNS):] + RUNS[:r % len(RUNS)]
        for run in order:
            say(f"round trip: {run.label}, {n:,} tasks (round {r + 1}/{rounds})")
            if run.workers is None:
                assert run.batch is not None
                raw = rawsql.claim_complete(pgbench, raw_url, run.batch, n // (2 * run.batch))
                rate = raw.rate
                result.notes.extend(f"{run.label}: {note}" for note in raw.notes)
            else:
                d = tw.throughput(tw_url, n, run.workers, run.fetch_limit,  # type: ignore[arg-type]
                                  start=lambda run=run: [tw.start_serve(
                                      tw_url, run.workers, run.fetch_limit)])  # type: ignore[arg-type]
                rate = d.rate
                result.notes.extend(f"{run.label}: {note}" for note in d.notes)
            if rate:
                result.rates.setdefault(run.label, []).append(rate)
    return result


def report(rt: RoundTrip) -> list[str]:
    lines = [f"One round trip per batch (benchmarks/roundtrip.py): {rt.n:,} no-op tasks per "
             "run, interleaved rounds, medians (each run in brackets)", "",
             "| run | tasks/s | runs |", "| --- | ---: | --- |"]
    for run in RUNS:
        values = rt.rates.get(run.label, [])
        med = rt.median(run.label)
        lines.append(f"| {run.label} | {med or 0:,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in values)} |")
    lines.append("")
    for ours, raw, target in TARGETS:
        a, b = rt.median(ours), rt.median(raw)
        if a and b:
            verdict = "met" if a / b >= target else "NOT met"
            lines.append(f"- {ours} / {raw}: {a / b:.2f} (target >= {target:g}) -> {verdict}")
    lines += [f"- {note}" for note in rt.notes]
    return lines
