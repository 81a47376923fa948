"""A handler's write through its task's bound transaction against the same write
committed apart (part 21, "Tests": its cost in the benchmark): one serve at
WORKER_COUNT=20 (FETCH_LIMIT unset, TRANSACTION_POOL_SIZE=20) drains N tasks
that each insert one row, three ways, interleaved round by round:

  bound     `with taskworker.transaction()`: the insert and the outcome commit
            together (exactly once)
  connect   a connection of its own per run, committed apart (the README
            example's way before part 21; at least once)
  kept      a connection kept per worker, committed apart (at least once)

Reported: tasks/s, medians, and bound's ratio to each. After every run the
effects are counted: bound must have written each task's row exactly once.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .databases import connect, execute
from .processes import Proc

WORKERS = 20
MODULE = "benchmarks.bound_tasks"
WAYS = {"bound": "bench_bound", "connect": "bench_apart_connect", "kept": "bench_apart_kept"}
INSERT = """
WITH ins AS (
    INSERT INTO tasks (task, arguments, format)
    SELECT '{task}', jsonb_build_object('args', jsonb_build_array(n)), 2
    FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""


@dataclass
class Bound:
    n: int
    rounds: int
    this_code: str = ""
    rates: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, way: str) -> float | None:
        values = self.rates.get(way)
        return statistics.median(values) if values else None


def _serve(url: str) -> Callable[[], list[Proc]]:
    return lambda: [tw.start_serve(url, WORKERS, None,
                                   task_modules=MODULE, transaction_pool_size=WORKERS)]


def _effects(url: str, way: str, n: int, notes: list[str]) -> Callable[[list[Proc]], None]:
    """After a drain: every task wrote its row (bound: exactly once); then empty
    the table for the next run."""
    def check(_: list[Proc]) -> None:
        conn = connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*), count(DISTINCT n) FROM bench_effects")
                rows, distinct = cur.fetchone()
                cur.execute("TRUNCATE bench_effects")
            conn.commit()
        finally:
            conn.close()
        if distinct != n or (way == "bound" and rows != n):
            notes.append(f"{way}: {rows} effect rows for {distinct} of {n} tasks")
    return check


def measure(url: str, n: int, rounds: int, say: Callable[[str], None],
            this_code: str = "") -> Bound:
    result = Bound(n, rounds, this_code)
    execute(url, "CREATE TABLE IF NOT EXISTS bench_effects (n bigint NOT NULL)")
    ways = list(WAYS)
    for r in range(rounds):
        for way in ways[r % len(ways):] + ways[:r % len(ways)]:
            say(f"bound: {n:,} tasks, {way} (round {r + 1}/{rounds})")
            d = tw.throughput(url, n, WORKERS, None,
                              insert=INSERT.format(task=WAYS[way]), checkpoint=True,
                              start=_serve(url), on_drained=_effects(url, way, n, result.notes))
            if d.rate:
                result.rates.setdefault(way, []).append(d.rate)
            result.notes.extend(f"bound {way}: {note}" for note in d.notes)
    return result


def report(b: Bound) -> list[str]:
    lines = [f"A write through the bound transaction against the same write committed apart "
             f"(benchmarks/bound.py): one serve, WORKER_COUNT={WORKERS}, {b.n:,} tasks per "
             f"run, {b.rounds} interleaved rounds, medians", ""]
    if b.this_code:
        lines += [f"- this code: {b.this_code}", ""]
    lines += ["| way | tasks/s (median) | each run |", "| --- | ---: | --- |"]
    for way in WAYS:
        each = ", ".join(f"{v:,.0f}" for v in b.rates.get(way, []))
        lines.append(f"| {way} | {b.median(way) or 0:,.0f} | {each} |")
    bound = b.median("bound")
    ratios = [f"- bound / {way}: {bound / other:.2f}" for way in ("connect", "kept")
              if bound and (other := b.median(way))]
    return [*lines, "", *ratios, *(f"- {note}" for note in b.notes)]
