"""Tasks called with JSON arguments against text payloads (part 14, "Speed"):
one `serve` at WORKER_COUNT=100 and at 20 (FETCH_LIMIT unset) drains N no-op
calls, rows as `bench_call.enqueue(conn, n, key="k")` writes them (format 2,
the function returns a small dict, stored as JSON), and N text rows for the
no-op TASK_HANDLER (format 1), interleaved round by round, with the same
settings (the same serve command: TASK_MODULES and TASK_HANDLER both set).
Target: the calls' median at least 0.9 of the text rows' median.

The text path against an older commit is the roundtrip phase's
(`--only roundtrip --against 5c69215`): this phase does not repeat it.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .databases import connect
from .processes import Proc

WORKERS = (100, 20)
TARGET = 0.9
MODULE = "benchmarks.call_tasks"
INSERT_CALLS = """
WITH ins AS (
    INSERT INTO tasks (task, arguments, format)
    SELECT 'bench_call',
           jsonb_build_object('args', jsonb_build_array(n), 'kwargs',
                              jsonb_build_object('key', 'k')), 2
    FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
"""
WORKLOADS = {"text": tw.INSERT_PENDING, "calls": INSERT_CALLS}


@dataclass
class Calls:
    n: int
    rounds: int
    this_code: str = ""  # git commit and work tree state of the code measured
    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # (workload, W)
    notes: list[str] = field(default_factory=list)

    def median(self, workload: str, workers: int) -> float | None:
        values = self.rates.get((workload, workers))
        return statistics.median(values) if values else None


def _serve(url: str, workers: int) -> Callable[[], list[Proc]]:
    return lambda: [tw.start_serve(url, workers, None,
                                   task_modules=MODULE)]


def _check_return(url: str, notes: list[str]) -> Callable[[list[Proc]], None]:
    """After a drain of calls: one row's return value is the function's."""
    def check(_: list[Proc]) -> None:
        conn = connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT arguments, return_value FROM tasks WHERE format = 2 "
                            "AND status = 'done' LIMIT 1")
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None or row[1] != {"n": row[0]["args"][0], "key": "k"}:
            notes.append(f"calls: a done row's return value is not the function's: {row}")
    return check


def measure(url: str, n: int, rounds: int, say: Callable[[str], None],
            this_code: str = "") -> Calls:
    result = Calls(n, rounds, this_code)
    jobs = [(w, workload) for w in WORKERS for workload in WORKLOADS]
    for r in range(rounds):
        for workers, workload in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
            say(f"calls: {n:,} {workload} tasks, W={workers} (round {r + 1}/{rounds})")
            d = tw.throughput(url, n, workers, None,
                              insert=WORKLOADS[workload], checkpoint=True,
                              start=_serve(url, workers),
                              on_drained=_check_return(url, result.notes)
                              if workload == "calls" else None)
            if d.rate:
                result.rates.setdefault((workload, workers), []).append(d.rate)
            result.notes.extend(f"calls {workload} W={workers}: {note}" for note in d.notes)
    return result


def report(c: Calls) -> list[str]:
    lines = [f"Calls with JSON arguments against text payloads (benchmarks/calls.py): one serve, "
             f"FETCH_LIMIT unset, {c.n:,} no-op tasks per run, {c.rounds} interleaved rounds, "
             "ratio of medians", ""]
    if c.this_code:
        lines += [f"- this code: {c.this_code}", ""]
    lines += [f"| setting | text tasks/s | calls tasks/s | calls / text (target >= {TARGET:g}) "
              "| text, each run | calls, each run |",
              "| --- | ---: | ---: | ---: | --- | --- |"]
    verdicts = []
    for w in WORKERS:
        text, calls = c.median("text", w), c.median("calls", w)
        ratio = calls / text if calls and text else None
        each = [", ".join(f"{v:,.0f}" for v in c.rates.get((k, w), []))
                for k in ("text", "calls")]
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| W={w} | {text or 0:,.0f} | {calls or 0:,.0f} | {shown} | {each[0]} | "
                     f"{each[1]} |")
        verdict = "n/a" if ratio is None else ("met" if ratio >= TARGET else "NOT met")
        verdicts.append(f"- W={w}: calls / text {shown} (target >= {TARGET:g}) -> {verdict}")
    return [*lines, "", *verdicts, *(f"- {note}" for note in c.notes)]
