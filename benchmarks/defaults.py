"""What a user who never sets FETCH_LIMIT gets: one `serve` with FETCH_LIMIT
unset (each claim sized by the idle workers and the measured task rate, at most
1,000) against set values, interleaved round by round, medians reported.

  no-op      WORKER_COUNT=100: unset, 10 (the original's default), 100, 1000
  50 ms I/O  a cooperative 50 ms sleep, WORKER_COUNT=500 (ideal 10,000/s): unset, 10, 100
  1 s I/O    a cooperative 1 s sleep, WORKER_COUNT=10,000 (ideal 10,000/s): unset, 10, 1000

The I/O rows give the share of the ideal WORKER_COUNT / sleep and the process's
peak RSS (VmHWM).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .processes import Proc


@dataclass(frozen=True)
class Case:
    name: str
    workers: int
    handler: str
    n: int
    ideal: float | None  # tasks/s if every worker were always busy (I/O only)
    limits: tuple[int | None, ...]  # FETCH_LIMIT values; None: unset


def cases(quick: bool) -> list[Case]:
    scale = 2 if quick else 1
    return [
        Case("no-op, WORKER_COUNT=100", 100, tw.NOOP, 50_000 // scale, None,
             (None, 10, 100, 1000)),
        Case("50 ms I/O, WORKER_COUNT=500", 500, "benchmarks.iobound:sleep", 30_000 // scale,
             500 / 0.05, (None, 10, 100)),
        Case("1 s I/O, WORKER_COUNT=10,000", 10_000, "benchmarks.iobound:sleep_1s",
             40_000 // scale, 10_000 / 1.0, (None, 10, 1000)),
    ]


@dataclass
class Defaults:
    cases: list[Case]
    runs: dict[tuple[str, int | None], list[tw.Drain]] = field(default_factory=dict)


def measure(url: str, quick: bool, rounds: int, say: Callable[[str], None],
            notes: list[str]) -> Defaults:
    result = Defaults(cases(quick))
    for r in range(rounds):
        for case in result.cases:
            limits = list(case.limits)
            for limit in limits[r % len(limits):] + limits[:r % len(limits)]:
                shown = "unset" if limit is None else limit
                say(f"defaults: {case.name}, FETCH_LIMIT={shown} (round {r + 1}/{rounds})")
                d = tw.throughput(url, case.n, case.workers, limit, start=_starter(
                    url, case, limit))
                result.runs.setdefault((case.name, limit), []).append(d)
                notes.extend(f"defaults {case.name} FETCH_LIMIT={shown}: {note}"
                             for note in d.notes)
    return result


def _starter(url: str, case: Case, limit: int | None) -> Callable[[], list[Proc]]:
    return lambda: [tw.start_serve(url, case.workers, limit,
                                   handler=case.handler)]


def report(d: Defaults) -> list[str]:
    lines = ["FETCH_LIMIT unset against set values (benchmarks/defaults.py): one serve, "
             "interleaved rounds, medians (each run in brackets)", "",
             "| tasks | FETCH_LIMIT | tasks/s | of the ideal | peak RSS MB |",
             "| --- | --- | ---: | ---: | ---: |"]
    for case in d.cases:
        for limit in case.limits:
            runs = d.runs.get((case.name, limit), [])
            rates = [r.rate for r in runs if r.rate]
            if not rates:
                continue
            rate = statistics.median(rates)
            each = ", ".join(f"{x:,.0f}" for x in rates)
            ideal = f"{rate / case.ideal:.0%}" if case.ideal else ""
            rss = [kb for r in runs for kb in r.rss_kb if kb]
            peak = f"{max(rss) / 1024:.0f}" if rss else ""
            shown = "unset" if limit is None else str(limit)
            lines.append(f"| {case.name} | {shown} | {rate:,.0f} ({each}) | {ideal} | {peak} |")
    return lines
