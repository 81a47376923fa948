"""The claim statement alone, per backlog shape: milliseconds per claim (the
round trip, planning included, as the fetcher sees it) of the part-7 claim
(`taskworker.store.tasks.claim`, with the pairs an earlier claim found, and
discovering them) against the part-3 claim (one ordered scan of
tasks_claimable_idx, read from git 610de36), in claims of 100 and of 10.

Each measurement starts from the shape as loaded (claimed rows put back to
pending and the table vacuumed, or, never analyzed, loaded again) and runs
CLAIMS claims in a row: "fresh" is the first, "after" the median of the others,
which walk the index entries of the rows claimed before them (dead until VACUUM).
Shapes, variants and sizes are interleaved round by round; medians reported.
"""
from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskworker.store import tasks
from taskworker.store.database import Direct
from taskworker.store.sql import parse
from taskworker.store.tasks import Served

from .databases import connect
from .processes import BenchError
from .taskworker_runs import REPO

CLAIMS = 30  # claims in a row per measurement
LIMITS = (100, 10)

PART3 = "610de36"  # part 6's code: the claim of part 3, before the part-7 rewrite


def part3_claim() -> str:
    """The claim statement of git PART3 (every queue and name, oldest first, through
    tasks_claimable_idx (run_at, id)), read from the repository's history."""
    shown = subprocess.run(["git", "-C", str(REPO), "show",
                            f"{PART3}:taskworker/store/queries.sql"],
                           capture_output=True, text=True, check=False)
    if shown.returncode != 0:
        raise BenchError(f"git show {PART3}: {shown.stderr.strip()[-300:]}")
    return parse(shown.stdout)["claim"]


SPREAD = ("INSERT INTO tasks (payload, queue, priority) SELECT 'spread ' || n, 'q' || (n % 10), "
          "(n / 10) % 5 FROM generate_series(1, 100000) AS n")
OWN = ("INSERT INTO tasks (payload, queue, task) SELECT 'own ' || n, 'default', {task} "
       "FROM generate_series(1, 3000) AS n")
PUT_BACK = ("UPDATE tasks SET status = 'pending', attempts = 0, locked_by = NULL, "
            "locked_until = NULL WHERE status = 'in_progress'")


@dataclass(frozen=True)
class Shape:
    name: str
    load: tuple[str, ...]  # statements after TRUNCATE
    served: Served
    analyzed: bool = True  # ANALYZE after the load (else: loaded again for every measurement)


SHAPES = (
    Shape("100,000 pending, 10 queues x 5 priorities", (SPREAD,), Served(None, [""], {}, [])),
    Shape("the same, never analyzed", (SPREAD,), Served(None, [""], {}, []), analyzed=False),
    Shape("+ 1,000,000 done rows", (
        "INSERT INTO tasks (status, attempts, queue) SELECT 'done', 1, 'q' || (n % 10) "
        "FROM generate_series(1, 1000000) AS n", SPREAD), Served(None, [""], {}, [])),
    Shape("100,000 at priority 10 in a queue not served, 3,000 served", (
        "INSERT INTO tasks (payload, queue, priority) SELECT 'added ' || n, 'added', 10 "
        "FROM generate_series(1, 100000) AS n", OWN.format(task="NULL")),
        Served(["default"], [""], {}, [])),
    Shape("100,000 at priority 10 of a name not known, 3,000 known, one queue", (
        "INSERT INTO tasks (payload, task, priority) SELECT 'added ' || n, 'added', 10 "
        "FROM generate_series(1, 100000) AS n", OWN.format(task="'known'")),
        Served(None, ["known"], {}, [])),
)
VARIANTS = ("part 7, pairs kept", "part 7, discovering", "part 3")


@dataclass
class Timing:
    fresh: list[float] = field(default_factory=list)  # ms, first claim after a reset
    after: list[float] = field(default_factory=list)  # ms, median of the later claims
    claimed: list[int] = field(default_factory=list)  # rows per claim (median)


@dataclass
class Claims:
    times: dict[tuple[str, str, int], Timing] = field(default_factory=dict)  # shape, variant, limit
    split: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # planning, exec ms
    notes: list[str] = field(default_factory=list)


def load(conn: Any, shape: Shape) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE tasks")
        for statement in shape.load:
            cur.execute(statement)
        if shape.analyzed:
            cur.execute("VACUUM ANALYZE tasks")


def reset(conn: Any, shape: Shape) -> None:
    if not shape.analyzed:
        load(conn, shape)
        return
    with conn.cursor() as cur:
        cur.execute(PUT_BACK)
        cur.execute("VACUUM tasks")


def claimer(conn: Any, variant: str, shape: Shape, limit: int) -> Callable[[], int]:
    """One claim of `variant`, committed; returns the rows claimed."""
    db = Direct(conn)
    pairs = tasks.claim(db, holder="look", limit=1, lease=30, served=shape.served).pairs
    with conn.cursor() as cur:
        cur.execute(PUT_BACK)  # (the look's own claim)
    inline = max(4 * 1024 * 1024 // limit, 1)
    if variant == "part 3":
        statement = part3_claim()
        params = {"limit": limit, "alone": False, "holder": "bench", "lease": 30,
                  "inline_bytes": inline}

        def old() -> int:
            return len(db.query(statement, params))
        return old
    kept = pairs if variant == "part 7, pairs kept" else None

    def new() -> int:
        return len(tasks.claim(db, holder="bench", limit=limit, lease=30, served=shape.served,
                               pairs=kept, inline_bytes=inline).rows)
    return new


def measure(conn: Any, shape: Shape, variant: str, limit: int, timing: Timing) -> None:
    reset(conn, shape)
    claim = claimer(conn, variant, shape, limit)
    times, counts = [], []
    for _ in range(CLAIMS):
        t0 = time.perf_counter()
        counts.append(claim())
        times.append((time.perf_counter() - t0) * 1000)
    timing.fresh.append(times[0])
    timing.after.append(statistics.median(times[1:]))
    timing.claimed.append(int(statistics.median(counts)))


class Recorder:
    """A `Database` that keeps the statement and parameters it is sent (no rows)."""

    def __init__(self) -> None:
        self.sent: tuple[str, Any] = ("", None)

    def query(self, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
        self.sent = (statement, params)
        return []


def split(conn: Any, shape: Shape, limit: int) -> tuple[float, float]:
    """Planning and execution ms of one part-7 claim (pairs kept), by EXPLAIN
    ANALYZE of the statement tasks.claim sends (rolled back)."""
    reset(conn, shape)
    pairs = tasks.claim(Direct(conn), holder="look", limit=1, lease=30,
                        served=shape.served).pairs
    recorder = Recorder()
    tasks.claim(recorder, holder="bench", limit=limit, lease=30, served=shape.served,
                pairs=pairs)
    statement, params = recorder.sent  # a Prepared statement, as serve sends it
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("DEALLOCATE ALL")  # (prepared below, as on a new connection)
            cur.execute(statement.explained("ANALYZE, SUMMARY, FORMAT JSON", True), params)
            plan = cur.fetchone()[0][0]
    finally:
        conn.rollback()
        conn.autocommit = True
    return plan["Planning Time"], plan["Execution Time"]


def never_analyzed(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT c.reltuples < 0 AND NOT EXISTS (SELECT 1 FROM pg_stats "
                    "WHERE tablename = 'tasks') FROM pg_class AS c WHERE c.oid = 'tasks'::regclass")
        return bool(cur.fetchone()[0])


def run_claims(url: str, fresh_url: str, rounds: int, say: Callable[[str], None]) -> Claims:
    """Every shape, variant and claim size, `rounds` times, interleaved. The shape
    never analyzed lives in the database of `fresh_url`, which is never analyzed
    nor vacuumed (TRUNCATE keeps the statistics of an earlier ANALYZE)."""
    result = Claims()
    conns = {True: connect(url), False: connect(fresh_url)}
    try:
        for conn in conns.values():
            with conn.cursor() as cur:
                cur.execute("ALTER TABLE tasks SET (autovacuum_enabled = false)")
        jobs = [(v, n) for v in VARIANTS for n in LIMITS]
        for r in range(rounds):
            for i, shape in enumerate(SHAPES[r % len(SHAPES):] + SHAPES[:r % len(SHAPES)]):
                say(f"claims: {shape.name} (round {r + 1}/{rounds})")
                conn = conns[shape.analyzed]
                load(conn, shape)
                turn = (r + i) % len(jobs)
                for variant, limit in jobs[turn:] + jobs[:turn]:
                    timing = result.times.setdefault((shape.name, variant, limit), Timing())
                    measure(conn, shape, variant, limit, timing)
                if not shape.analyzed and not never_analyzed(conn):
                    result.notes.append(f"{shape.name}: the table had statistics")
                result.split.setdefault(shape.name, []).append(split(conn, shape, 100))
    finally:
        for conn in conns.values():
            conn.close()
    return result


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "n/a"


def report(c: Claims) -> list[str]:
    """The claims table: medians, and part 3 / part 7 ratios (above 1: part 7 is faster)."""
    lines = [f"Claims alone (benchmarks/claims.py): ms per claim, median over rounds; fresh = "
             f"the first claim after a reset, after = the median of the next {CLAIMS - 1} in a "
             "row (they walk the claimed rows' dead index entries); ratio = part 3 / part 7 "
             "(pairs kept), above 1: part 7 faster", "",
             "| shape | claim of | part 7, pairs kept: fresh / after | part 7, discovering: "
             "fresh / after | part 3: fresh / after | ratio fresh / after | rows per claim "
             "(7 / 3) | part 7 planning / execution, claim of 100 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for shape in SHAPES:
        for limit in LIMITS:
            t = {v: c.times.get((shape.name, v, limit), Timing()) for v in VARIANTS}
            new, old = t[VARIANTS[0]], t[VARIANTS[2]]
            ratios = " / ".join(
                f"{statistics.median(o) / statistics.median(n):.2f}" if o and n else "n/a"
                for o, n in ((old.fresh, new.fresh), (old.after, new.after)))
            parts = c.split.get(shape.name, [])
            plan = (f"{_ms([p for p, _ in parts])} / {_ms([e for _, e in parts])} ms"
                    if parts and limit == 100 else "")
            cells = " | ".join(f"{_ms(x.fresh)} / {_ms(x.after)}" for x in t.values())
            counts = " / ".join(str(int(statistics.median(x.claimed))) if x.claimed else "n/a"
                                for x in (new, old))
            lines.append(f"| {shape.name} | {limit} | {cells} | {ratios} | {counts} | {plan} |")
    return lines
