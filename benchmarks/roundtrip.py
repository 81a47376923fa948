"""One round trip per batch (issue 13, item 1): one default-sized `serve`
against raw SQL, interleaved round by round, medians.

  W=100   WORKER_COUNT=100, FETCH_LIMIT unset, against pgbench running
          taskworker's claim (claim_shares) and complete in batches of 100,
          2 clients (benchmarks/rawsql.py)
  W=20    WORKER_COUNT=20, FETCH_LIMIT unset and FETCH_LIMIT=20 (claims of what
          20 workers run at once), against raw SQL in batches of 20

Targets: W=100 at least 1.0x raw SQL batch 100; W=20 at least 0.8x raw SQL
batch 20. No-op tasks, the same number of tasks for every run.

With `against` (run.py --against REF), an older commit's serve runs the same
three settings in the same rounds, and the report gives each code's ratio to
raw SQL and the ratio of the two (target at least 0.9); and both codes run part
10's two I/O-bound shapes, FETCH_LIMIT unset, in the same rounds (ratio of
medians, target at least 0.9):

  50 ms x 500     WORKER_COUNT=500, tasks of a cooperative 50 ms sleep (ideal
                  10,000 tasks/s), IO_TASKS of them
  10,000 x 1 s    WORKER_COUNT=10,000, tasks of a cooperative 1 s sleep (ideal
                  10,000 tasks/s), IO_TASKS_LONG of them

With `limit_against`
(--limit-against REF), an A/B of a set FETCH_LIMIT=100 at W=20 and W=100, this
code against that commit's serve (target at least 1.0). An older commit is
exported with `git archive` (baseline.py) and runs on a database its own
`taskworker migrate` made.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import rawsql
from . import taskworker_runs as tw

IO_TASKS = 30_000  # tasks per run of 50 ms x 500 (3 s at the ideal rate)
IO_TASKS_LONG = 40_000  # tasks per run of 10,000 x 1 s (4 s at the ideal rate)


@dataclass(frozen=True)
class Code:
    """An older commit's serve: imported from its exported tree, on its own database."""
    commit: str
    url: str
    pythonpath: str
    about: str  # what the report says of it (commit, subject, schema)


@dataclass(frozen=True)
class Run:
    label: str
    workers: int | None  # None: raw SQL
    fetch_limit: int | None  # taskworker: None is unset; raw SQL: the batch
    batch: int | None = None
    code: Code | None = None  # None: this code
    handler: str = tw.NOOP
    tasks: int | None = None  # None: the phase's number of tasks


@dataclass(frozen=True)
class Io:
    """One of part 10's I/O-bound shapes, FETCH_LIMIT unset (the A/B with --against)."""
    name: str
    workers: int
    handler: str
    tasks: int
    ideal: float  # tasks/s with every worker always busy


def io_shapes(quick: bool = False) -> list[Io]:
    scale = 2 if quick else 1
    return [Io("50 ms x 500", 500, "benchmarks.iobound:sleep", IO_TASKS // scale, 500 / 0.05),
            Io("10,000 x 1 s", 10_000, "benchmarks.iobound:sleep_1s", IO_TASKS_LONG // scale,
               10_000 / 1.0)]


@dataclass(frozen=True)
class Setting:
    workers: int
    fetch_limit: int | None  # None: unset
    batch: int = 0  # the raw SQL batch it is held against (0: none, the A/B)
    target: float = 0.0  # its least ratio to that raw SQL

    @property
    def name(self) -> str:
        limit = "FETCH_LIMIT unset" if self.fetch_limit is None else \
            f"FETCH_LIMIT={self.fetch_limit}"
        return f"W={self.workers}, {limit}"


SETTINGS = [Setting(100, None, 100, 1.0), Setting(20, None, 20, 0.8), Setting(20, 20, 20, 0.8)]
LIMIT_SETTINGS = [Setting(20, 100), Setting(100, 100)]  # the A/B of a set FETCH_LIMIT
AGAINST_TARGET = 0.9  # this code's ratio to raw SQL / the older code's
LIMIT_TARGET = 1.0  # this code / the older code at FETCH_LIMIT=100


def raw_label(batch: int) -> str:
    return f"raw SQL, batch {batch}, 2 clients"


def serve_label(s: Setting, code: Code | None) -> str:
    return f"{'taskworker' if code is None else f'git {code.commit}'} {s.name}"


def io_label(io: Io, code: Code | None) -> str:
    return f"{'taskworker' if code is None else f'git {code.commit}'} {io.name}"


def plan(against: Code | None, limit_against: Code | None, quick: bool = False) -> list[Run]:
    """Every run of a round, in order: each setting by this code then the older
    one, each raw SQL batch after the settings held against it; then the I/O
    shapes by both codes, and the A/B of a set FETCH_LIMIT."""
    runs: list[Run] = []
    for batch in dict.fromkeys(s.batch for s in SETTINGS):
        for s in (s for s in SETTINGS if s.batch == batch):
            for code in (None, against) if against else (None,):
                runs.append(Run(serve_label(s, code), s.workers, s.fetch_limit, code=code))
        runs.append(Run(raw_label(batch), None, None, batch))
    if against:
        for io in io_shapes(quick):
            for code in (None, against):
                runs.append(Run(io_label(io, code), io.workers, None, code=code,
                                handler=io.handler, tasks=io.tasks))
    if limit_against:
        for s in LIMIT_SETTINGS:
            for code in (None, limit_against):
                runs.append(Run(serve_label(s, code), s.workers, s.fetch_limit, code=code))
    return runs


@dataclass
class RoundTrip:
    n: int
    rounds: int = 0
    runs: list[Run] = field(default_factory=lambda: plan(None, None))
    this_code: str = ""  # git commit and work tree state of the code measured
    against: Code | None = None
    limit_against: Code | None = None
    quick: bool = False
    rates: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, label: str) -> float | None:
        values = self.rates.get(label)
        return statistics.median(values) if values else None


def measure(tw_url: str, raw_url: str, pgbench: str, n: int, rounds: int,
            say: Callable[[str], None], against: Code | None = None,
            limit_against: Code | None = None, this_code: str = "",
            quick: bool = False) -> RoundTrip:
    runs = plan(against, limit_against, quick)
    result = RoundTrip(n, rounds, runs, this_code, against, limit_against, quick)
    for r in range(rounds):
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        for run in order:
            tasks = run.tasks or n
            say(f"round trip: {run.label}, {tasks:,} tasks (round {r + 1}/{rounds})")
            if run.workers is None:
                assert run.batch is not None
                raw = rawsql.claim_complete(pgbench, raw_url, run.batch, n // (2 * run.batch))
                rate = raw.rate
                result.notes.extend(f"{run.label}: {note}" for note in raw.notes)
            else:
                url = tw_url if run.code is None else run.code.url
                path = None if run.code is None else run.code.pythonpath
                d = tw.throughput(url, tasks, run.workers,
                                  run.fetch_limit,  # type: ignore[arg-type]
                                  start=lambda run=run, url=url, path=path: [tw.start_serve(
                                      url, run.workers, run.fetch_limit,  # type: ignore[arg-type]
                                      handler=run.handler, pythonpath=path)])
                rate = d.rate
                result.notes.extend(f"{run.label}: {note}" for note in d.notes)
            if rate:
                result.rates.setdefault(run.label, []).append(rate)
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _verdict(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("met" if value >= target else "NOT met")


def report(rt: RoundTrip) -> list[str]:
    lines = [f"One round trip per batch (benchmarks/roundtrip.py): {rt.n:,} no-op tasks per "
             f"run, {rt.rounds} interleaved round{'' if rt.rounds == 1 else 's'}, medians "
             "(each run in brackets)", ""]
    if rt.this_code:
        lines.append(f"- this code: {rt.this_code}")
    for code in dict.fromkeys(c for c in (rt.against, rt.limit_against) if c):
        lines.append(f"- git {code.commit}: {code.about}")
    lines += ["", "| run | tasks/s | runs |", "| --- | ---: | --- |"]
    for run in rt.runs:
        values = rt.rates.get(run.label, [])
        med = rt.median(run.label)
        lines.append(f"| {run.label} | {med or 0:,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in values)} |")
    lines.append("")
    if rt.against:
        lines += _against(rt, rt.against)
        lines += _io_against(rt, rt.against)
    if rt.limit_against:
        lines += _limit_ab(rt, rt.limit_against)
    for s in SETTINGS:
        ours, raw = serve_label(s, None), raw_label(s.batch)
        a = _ratio(rt.median(ours), rt.median(raw))
        if a:
            lines.append(f"- {ours} / {raw}: {a:.2f} (target >= {s.target:g}) -> "
                         f"{_verdict(a, s.target)}")
    lines += [f"- {note}" for note in rt.notes]
    return lines


def _against(rt: RoundTrip, old: Code) -> list[str]:
    """This code and the older one, each over raw SQL at the setting's batch."""
    g = f"git {old.commit}"
    lines = [f"This code against {g} (no-op, medians; raw SQL is the same runs for both, so "
             f"the ratio of the ratios is this code's median / {g}'s):", "",
             f"| setting | this code | {g} | raw SQL | this code / raw SQL | {g} / raw SQL | "
             f"ratio of the ratios (target >= {AGAINST_TARGET:g}) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    verdicts = []
    for s in SETTINGS:
        this, prior = rt.median(serve_label(s, None)), rt.median(serve_label(s, old))
        raw = rt.median(raw_label(s.batch))
        r_this, r_old = _ratio(this, raw), _ratio(prior, raw)
        both = _ratio(r_this, r_old)
        lines.append(f"| {s.name} (raw SQL batch {s.batch}) | {_fmt(this, ',.0f')} | "
                     f"{_fmt(prior, ',.0f')} | {_fmt(raw, ',.0f')} | {_fmt(r_this, '.2f')} | "
                     f"{_fmt(r_old, '.2f')} | {_fmt(both, '.2f')} |")
        verdicts.append(f"- {s.name}: this code {_fmt(r_this, '.2f')}x raw SQL, {g} "
                        f"{_fmt(r_old, '.2f')}x: {_fmt(both, '.2f')} of {g}'s (target >= "
                        f"{AGAINST_TARGET:g}) -> {_verdict(both, AGAINST_TARGET)}")
    return [*lines, "", *verdicts, ""]


def _io_against(rt: RoundTrip, old: Code) -> list[str]:
    """Part 10's I/O-bound shapes, FETCH_LIMIT unset: this code against the older one."""
    g = f"git {old.commit}"
    lines = [f"I/O-bound tasks, FETCH_LIMIT unset, this code against {g} (ratio of medians; "
             "the rate runs from the first completion to the last, so a shape whose first "
             "tasks all end together can show more than the ideal):", "",
             f"| shape | tasks per run | this code | {g} | ratio (target >= {AGAINST_TARGET:g}) "
             f"| this code, of the ideal | this code, each run | {g}, each run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    verdicts = []
    for io in io_shapes(rt.quick):
        ours, theirs = io_label(io, None), io_label(io, old)
        this, prior = rt.median(ours), rt.median(theirs)
        r = _ratio(this, prior)
        each = [", ".join(f"{v:,.0f}" for v in rt.rates.get(label, []))
                for label in (ours, theirs)]
        share = f"{this / io.ideal:.0%}" if this else "n/a"
        lines.append(f"| {io.name} (W={io.workers:,}) | {io.tasks:,} | {_fmt(this, ',.0f')} | "
                     f"{_fmt(prior, ',.0f')} | {_fmt(r, '.2f')} | {share} | {each[0]} | "
                     f"{each[1]} |")
        verdicts.append(f"- {io.name}: this code / {g}: {_fmt(r, '.2f')} (target >= "
                        f"{AGAINST_TARGET:g}) -> {_verdict(r, AGAINST_TARGET)}")
    return [*lines, "", *verdicts, ""]


def _limit_ab(rt: RoundTrip, old: Code) -> list[str]:
    """A set FETCH_LIMIT=100: this code against the older one, ratio of medians."""
    g = f"git {old.commit}"
    lines = [f"A set FETCH_LIMIT, this code against {g} (no-op, ratio of medians):", "",
             f"| setting | this code | {g} | ratio (target >= {LIMIT_TARGET:g}) | "
             f"this code, each run | {g}, each run |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    verdicts = []
    for s in LIMIT_SETTINGS:
        ours, theirs = serve_label(s, None), serve_label(s, old)
        this, prior = rt.median(ours), rt.median(theirs)
        r = _ratio(this, prior)
        each = [", ".join(f"{v:,.0f}" for v in rt.rates.get(label, []))
                for label in (ours, theirs)]
        lines.append(f"| {s.name} | {_fmt(this, ',.0f')} | {_fmt(prior, ',.0f')} | "
                     f"{_fmt(r, '.2f')} | {each[0]} | {each[1]} |")
        verdicts.append(f"- {s.name}: this code / {g}: {_fmt(r, '.2f')} (target >= "
                        f"{LIMIT_TARGET:g}) -> {_verdict(r, LIMIT_TARGET)}")
    return [*lines, "", *verdicts, ""]
