"""The busy statement's own cost, per task, against a minimal queue's pair, and
taskworker's extra broken down by feature (issue 28, part 20, item 2).

One connection in a loop, per statement not per process: claim N, then again
and again write the N outcomes of the last claim and claim N more, one
statement and one commit each (taskworker's claim_shares_completing, prepared
as serve prepares it: the statement objects of taskworker.store.tasks, their
parameters from tasks._shares_params and completion.outcome_arrays), against
the minimal queue's pair in the same loop (claim N, commit; complete N, commit:
two statements per batch), and the same pair fused into one statement (complete
the last N and claim N more, one commit), as a floor for the statement shape.

Two more ways of sending what serve sends: the same statement planned for
each statement's values (a custom plan; serve plans it once), and the writing
lane's way (claim_shares, then the outcomes written apart by `complete`: two
statements per batch, its figures per batch), with `complete` planned once, as
serve does, and planned for each batch's values.

taskworker's extra is broken down by sending variants of its statement: the
queries.sql text with one part taken out (or narrowed) at a time, parsed and
prepared as taskworker does, on the same table; one variant of the schema
(without tasks_finished_at_idx, which every completion writes into); and the
minimal fused statement on tables between the minimal one and tasks (tasks'
columns; with its triggers; with its indexes; tasks itself), which splits the
table's share from the statement's. Each run is checked: every claim takes N
rows and every outcome is written.

Figures: the median ms per statement (client's clock: the round trip, the
server's work and the commit's WAL flush) and, where the server has
pg_stat_statements loaded, the server's execution + planning time per
statement; both per task (/ N) in µs. Variants are interleaved round by round,
each run on a table truncated, filled with (iterations + 1) x N pending rows
(at least 50,000: below that the minimal claim's outer UPDATE is planned as a
sequential scan and hash join, which pgbench's runs on 100,000 rows do not get),
analyzed and checkpointed.

    python -m benchmarks.claimcost [--database-url URL] [--sizes 100,300]
                                   [--iterations N] [--rounds N] [--only NAMES]

(the URL names a server; a database of its own is made there and dropped).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import psycopg2
import psycopg2.extensions

from taskworker.store import arrays, completion, sql, tasks
from taskworker.store.completion import OutcomeWrite, outcome_arrays
from taskworker.store.connection import TimedConnection
from taskworker.store.prepared import Prepared
from taskworker.store.prepared import run as run_prepared

from .rawsql import fill

SIZES = (100, 300)
ITERATIONS = 60  # timed statements per run
ROUNDS = 3
HOLDER = "claimcost"
LEASE = 30.0
INLINE = 41943  # serve's inline_bytes at FETCH_LIMIT 100 (as rawsql.py)


@dataclass(frozen=True)
class Variant:
    """taskworker's statement with `edits` made to queries.sql's text (each
    (old, new): old must be in the file exactly once), or, with `drop_indexes`,
    sent as is on the table without those indexes."""
    name: str
    what: str
    edits: tuple[tuple[str, str], ...] = ()
    drop_indexes: tuple[str, ...] = ()
    others: int = 0  # rows in progress held by other processes
    custom: bool = False  # planned for each statement's values (a custom plan)
    apart: bool = False  # claim_shares, then the outcomes written apart by `complete`


def _file() -> str:
    return resources.files("taskworker.store").joinpath("queries.sql").read_text("utf-8")


def _part(pattern: str) -> str:
    """The one part of queries.sql's text that `pattern` matches (its group)."""
    found = re.findall(pattern, _file(), re.M | re.S)
    if len(found) != 1:
        raise ValueError(f"claimcost: {pattern!r} matches queries.sql {len(found)} times")
    return str(found[0])


# The parts of queries.sql the variants change (read from it, so they are what
# taskworker sends): shares_claimed's pick, and the row and columns of a claim.
PICKED = _part(r"^-- name: shares_claimed\n.*?^(picked AS MATERIALIZED \(\n.*?^\),)")
# The minimal claim's pick on the tasks table: pending, in order of the claimable
# index (run_at, id), the claim's size; no queues, shares, priorities, names,
# due time, run_alone, format or pause.
PICKED_PLAIN = """picked AS MATERIALIZED (
    SELECT t.id, %(limit)s AS share FROM tasks AS t
    WHERE t.status = 'pending'
    ORDER BY t.run_at, t.id
    LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
),"""
# One queue, no shares (no unnest, no LATERAL), its filters and priority order kept.
PICKED_ONE_QUEUE = """picked AS MATERIALIZED (
    SELECT t.id, %(limit)s AS share FROM tasks AS t
    WHERE t.status = 'pending' AND t.queue = 'default' AND t.run_at <= now()
      AND NOT t.run_alone AND coalesce(t.task, '') = ANY(%(names)s::text[])
      AND t.format <= 2
    ORDER BY t.priority DESC, t.run_at, t.id
    LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
),"""
NULLS = "NULL, " * 8  # (the claim's columns an outcome's row leaves empty)
STATES = (f"SELECT id, {NULLS}fence, NULL, NULL, NULL, NULL,\n       NULL, written\n"
          "FROM (/* include outcome_states */) AS states")
STATES_NONE = (f"SELECT id, {NULLS}fence, NULL, NULL, NULL, NULL,\n       NULL, 'now'::text\n"
               "FROM written")
# busy_take's format condition (what each part of the busy pick filters)
BUSY_FORMAT = "  AND t.format <= 2\nORDER BY t.priority DESC, t.run_at, t.id\nLIMIT s.share\n"
# outcomes_written's fence, and the columns it sets
FENCE = _part(r"^-- name: outcomes_written\n.*?^(    WHERE t\.id = v\.id\n.*?)\n    RETURNING")
OUTCOME_SET = _part(r"^-- name: outcomes_written\n.*?^(    SET status = v\.status,\n.*?"
                    r"updated_at = now\(\))\n")
CLAIMED_ROW = sql.QUERIES["claimed_row"]
CLAIMED_COLUMNS = sql.QUERIES["claimed_columns"]
# (the same columns, the ones serve needs only for other kinds of tasks as
# constants: payload read as is, no size, no trace, no cancel)
CLAIMED_COLUMNS_NARROW = """t.id, t.payload, t.attempts, t.rescues, 0::bigint AS size,
    NULL::text AS task, 'default'::text AS queue, share, false AS cancel,
    t.fence, t.unstarted_rescues, 1::smallint AS format, NULL::text AS trace,
    0 AS priority, t.run_at"""
FINISHED_INDEX = ("tasks_finished_at_idx",)
OTHERS = 900

VARIANTS = [
    Variant("as sent", "claim_shares_completing as serve sends it"),
    Variant("no pause check", "without the paused-queue NOT EXISTS",
            ((PICKED, PICKED.replace(PICKED.splitlines()[-2] + "\n", "")),)),
    Variant("no format <= 2", "without `t.format <= 2` (the claim index's predicate has it)",
            ((BUSY_FORMAT, BUSY_FORMAT.replace("  AND t.format <= 2\n", "")),)),
    Variant("one queue, no shares", "the pick without unnest/LATERAL over queues and shares "
            "(one queue's filters and priority order kept)", ((PICKED, PICKED_ONE_QUEUE),)),
    Variant("plain pick", "the pick of the minimal claim: pending in (run_at, id) order, "
            "no queue, share, priority, name, due time, run_alone, format or pause",
            ((PICKED, PICKED_PLAIN),)),
    Variant("no outcome states", "without outcome_states (no per-outcome 'now'/'before'/"
            "'fenced' answer: the written rows only)", ((STATES, STATES_NONE),)),
    Variant("no fence", "the outcome write without its fence (fence, holder, in_progress)",
            ((FENCE, "    WHERE t.id = v.id"),)),
    Variant("narrow outcome write", "the outcome write sets status, result, the lease and "
            "updated_at only (no format CASE, return_value, error, traceback, attempts, "
            "run_at, started_at)",
            ((OUTCOME_SET, "    SET status = v.status,\n        result = v.result,\n"
                           "        locked_by = NULL,\n        locked_until = NULL,\n"
                           "        updated_at = now()"),)),
    Variant("narrow claimed row", "the claim sets status, holder, lease, fence and "
            "updated_at only (no run_alone, attempts, started_at)",
            ((CLAIMED_ROW, "status = 'in_progress',\n    locked_by = %(holder)s,\n"
                           "    locked_until = now() + %(lease)s * interval '1 second',\n"
                           "    fence = t.fence + 1,\n    updated_at = now()"),)),
    Variant("narrow RETURNING", "the claim returns id, payload as is, attempts, rescues, "
            "fence, run_at (no size, payload CASE, trace, cancel, task, queue, priority)",
            ((CLAIMED_COLUMNS, CLAIMED_COLUMNS_NARROW),)),
    Variant("no finished index", "as sent, on the table without tasks_finished_at_idx "
            "(prune, dashboard), which every completion writes into",
            drop_indexes=FINISHED_INDEX),
    Variant("custom plan", "as sent, planned for each statement's values (serve plans it "
            "once: a generic plan)", custom=True),
    Variant("apart", "claim_shares, then the outcomes written by `complete` (the writing "
            "lane's way, when no claim goes with them): two statements per batch", apart=True),
    Variant("apart custom plan", "apart, `complete` planned for each batch's values "
            "(serve plans it once)", apart=True, custom=True),
    Variant("as sent, others in progress", f"as sent, with {OTHERS} more rows in progress "
            "held by other processes (three more processes' claims of 300)", others=OTHERS),
]
ALL_OUT = Variant(
    "all of these out", "every variant above at once (plain pick, no outcome states, no "
    "fence, narrow writes and RETURNING, no finished index)",
    tuple(e for v in VARIANTS if v.name in (
        "plain pick", "no outcome states", "no fence", "narrow outcome write",
        "narrow claimed row", "narrow RETURNING") for e in v.edits), FINISHED_INDEX)
VARIANTS.append(ALL_OUT)
MINIMAL_PAIR = "minimal pair"
MINIMAL_FUSED = "minimal fused"
# The minimal fused statement on tables between the minimal one and tasks:
# (report name, table, what).
WIDE = "minimal_wide"  # the columns of tasks, the minimal table's two indexes
WIDE_TRIGGERS = "minimal_wide_triggers"  # and tasks' row triggers
WIDE_INDEXES = "minimal_wide_indexes"  # the columns of tasks and its 11 indexes
TABLES = [
    ("minimal fused, tasks' columns", WIDE,
     "the minimal fused statement on a table of tasks' 32 columns (the minimal table's two "
     "indexes)"),
    ("minimal fused, + tasks' triggers", WIDE_TRIGGERS,
     "the same with tasks' row triggers (the claim in (run_at, id) order)"),
    ("minimal fused, + tasks' indexes", WIDE_INDEXES,
     "tasks' columns and its 11 indexes, no triggers (the claim in (run_at, id) order, "
     "tasks_claimable_idx)"),
    ("minimal fused, on tasks", "tasks",
     "the minimal fused statement on the tasks table itself (its indexes and triggers)")]
WIDE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {WIDE} (LIKE tasks INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE {WIDE} ADD PRIMARY KEY (id);
CREATE INDEX {WIDE}_pending_idx ON {WIDE} (id) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS {WIDE_TRIGGERS} (LIKE tasks INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE {WIDE_TRIGGERS} ADD PRIMARY KEY (id);
CREATE INDEX {WIDE_TRIGGERS}_pending_idx ON {WIDE_TRIGGERS} (run_at, id)
    WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS {WIDE_INDEXES} (LIKE tasks INCLUDING ALL);
"""
ROWS_AT_LEAST = 50_000  # pending rows per run: the minimal claim's plan as in pgbench's runs


def statement_text(v: Variant) -> str:
    """claim_shares_completing with the variant's edits made to queries.sql."""
    text = _file()
    for old, new in v.edits:
        if text.count(old) != 1:
            raise ValueError(f"claimcost variant {v.name!r}: {old[:60]!r}... is in "
                             f"queries.sql {text.count(old)} times, not once")
        text = text.replace(old, new)
    return sql.parse(text)["claim_shares_completing"]


def prepared_for(v: Variant, n: int) -> Prepared:
    """The Prepared statement serve would send for n outcomes, with the variant's text."""
    sent = completion.COMPLETE if v.apart else tasks.CLAIM_SHARES_COMPLETING
    if v.custom:
        return Prepared(f"claimcost_custom_{'apart_' if v.apart else ''}{n}", sent.text,
                        completion.COMPLETE_TYPES if v.apart else tasks._COMPLETING_TYPES,
                        sent.prefix, generic=False)
    if v.apart:
        return sent
    if not v.edits:
        assert statement_text(v) == sent.text
        return sent
    key = "".join(ch if ch.isalnum() else "_" for ch in v.name)
    return Prepared(f"claimcost_{key}_{n}", statement_text(v), tasks._COMPLETING_TYPES,
                    sql.ORDERED)


# The minimal queue's statements (minimal.py), prepared and planned for their
# values each time as pgbench runs them (-M prepared, force_custom_plan).
def _minimal_statements(table: str) -> tuple[Prepared, Prepared, Prepared]:
    from .minimal import CLAIM, COMPLETE, TABLE
    claim = CLAIM.format(batch="%(limit)s").replace(TABLE, table)
    if table not in (TABLE, WIDE):  # (a pending index on run_at, id: as tasks_claimable_idx)
        claim = claim.replace("ORDER BY id", "ORDER BY run_at, id")
    complete = COMPLETE.format(ids="%(ids)s::bigint[]").replace(TABLE, table)
    fused = (f"WITH completed AS (\n{complete}\n),\nclaimed AS (\n{claim}\n)\n"
             "SELECT id, payload FROM claimed")
    types = {"limit": "int", "ids": "bigint[]"}
    return (Prepared(f"claimcost_{table}_claim", claim, types, generic=False),
            Prepared(f"claimcost_{table}_complete", complete, types, generic=False),
            Prepared(f"claimcost_{table}_fused", fused, types, generic=False))


@dataclass
class Series:
    client_ms: list[float] = field(default_factory=list)  # per statement (pair: per batch)
    server_ms: list[float] = field(default_factory=list)  # per run: mean per batch
    plan_ms: list[float] = field(default_factory=list)  # per run: of it planning
    cpu_ms: list[float] = field(default_factory=list)  # per run: the backend's CPU per batch
    round_ms: list[float] = field(default_factory=list)  # per run: median per batch


@dataclass
class Cost:
    sizes: tuple[int, ...]
    iterations: int
    rounds: int
    stats: bool = False  # pg_stat_statements figures
    series: dict[tuple[str, int], Series] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def per_task_us(self, name: str, n: int, kind: str = "client") -> float | None:
        """Median µs per task of `kind`: client, server, plan or cpu."""
        s = self.series.get((name, n))
        if s is None:
            return None
        values = {"client": s.client_ms, "server": s.server_ms, "plan": s.plan_ms,
                  "cpu": s.cpu_ms}[kind]
        return statistics.median(values) * 1000 / n if values else None


def connect(url: str) -> TimedConnection:
    conn = psycopg2.connect(url, connection_factory=TimedConnection,
                            application_name="twbench claimcost")
    conn.autocommit = True
    conn.statement_timeout_ms = 60_000
    conn.prepared = set()
    return conn


def _fill(cur: psycopg2.extensions.cursor, table: str, rows: int, others: int = 0,
          keep: bool = False) -> None:
    """`rows` pending, then `others` in progress, held by other processes; in a
    table emptied first, or with `keep` added to the rows it has."""
    fill(cur, table, rows, analyze=False, truncate=not keep)
    if others:
        cur.execute("INSERT INTO tasks (payload, status, locked_by, locked_until, attempts, "
                    "fence) SELECT 'other ' || n, 'in_progress', 'other ' || n %% 3, "
                    "now() + interval '1 hour', 1, 1 FROM generate_series(1, %s) AS n",
                    (others,))
    cur.execute(f"ANALYZE {table}")
    cur.execute("CHECKPOINT")


def _stats_reset(cur: psycopg2.extensions.cursor, stats: bool) -> None:
    if stats:
        cur.execute("SELECT pg_stat_statements_reset()")


class Backend(NamedTuple):
    """Per statement sent (the minimal pair: per batch), in ms."""
    exec_ms: float | None  # pg_stat_statements: execution + planning
    plan_ms: float | None  # of it planning
    cpu_ms: float | None  # the backend's CPU time (/proc/PID/schedstat)


def backend_cpu(conn: psycopg2.extensions.connection) -> float | None:
    """ms of CPU the server process of `conn` has used, if it runs on this
    machine (its command line names this connection's client port)."""
    pid = conn.info.backend_pid
    with conn.cursor() as cur:
        cur.execute("SELECT inet_client_port()")
        port = cur.fetchone()[0]
    try:
        if f"({port})".encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def _backend(cur: psycopg2.extensions.cursor, stats: bool, statements: int,
             conn: psycopg2.extensions.connection, cpu_start: float | None) -> Backend:
    """Execution + planning ms, and planning ms, of this database's statements
    since the reset, and the backend's CPU since `cpu_start`, per statement sent."""
    cpu_end = backend_cpu(conn) if cpu_start is not None else None
    cpu = None if cpu_start is None or cpu_end is None else (cpu_end - cpu_start) / statements
    if not stats:
        return Backend(None, None, cpu)
    cur.execute("SELECT coalesce(sum(total_exec_time + total_plan_time), 0), "
                "coalesce(sum(total_plan_time), 0) "
                "FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND toplevel AND query NOT ILIKE '%pg_stat_statements%'")
    total, plan = cur.fetchone()
    return Backend(float(total) / statements, float(plan) / statements, cpu)


def run_taskworker(url: str, v: Variant, n: int, iterations: int, stats: bool,
                   notes: list[str], keep: bool = False) -> tuple[list[float], Backend]:
    """ms per statement, and the server's ms per statement (pg_stat_statements).
    `keep`: the loop's pending rows are added to the table's rows instead of
    replacing them (a table with history; the caller removes them again)."""
    statement = prepared_for(v, n)
    admin = psycopg2.connect(url)
    admin.autocommit = True
    conn = connect(url)
    dropped: list[str] = []
    try:
        with admin.cursor() as cur:
            for index in v.drop_indexes:
                cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,))
                dropped.append(cur.fetchone()[0])
                cur.execute(f"DROP INDEX {index}")
            _fill(cur, "tasks", max(ROWS_AT_LEAST, (iterations + 1) * n), v.others,
                  keep)
        params = {**tasks._shares_params(HOLDER, LEASE, [""], {"default": n}, INLINE, {})}
        times: list[float] = []
        rows: list[tuple] = []
        short = 0
        with conn.cursor() as cur, admin.cursor() as acur:
            for i in range(iterations + 1):
                writes = [OutcomeWrite(r[0], r[9], "done", r[1][::-1], None, None, False,
                                       r[3] + r[10]) for r in rows]
                # (built before the clock starts, for either way of sending them)
                values = ({"holder": HOLDER, **outcome_arrays(writes)} if v.apart
                          else {**params, **outcome_arrays(writes)})
                if i == 1:
                    _stats_reset(acur, stats)
                    cpu_start = backend_cpu(conn)
                t0 = time.perf_counter()
                if v.apart:  # (the outcomes first, as the writing lane; then the claim)
                    written = 0
                    if writes:
                        run_prepared(cur, statement, values)
                        written = sum(1 for r in cur.fetchall() if r[2] in ("now", "before"))
                    run_prepared(cur, tasks.CLAIM_SHARES, params)
                    rows = cur.fetchall()
                else:
                    run_prepared(cur, statement, values)
                    found = cur.fetchall()
                    rows = [r for r in found if r[15] is None]
                    written = sum(1 for r in found if r[15] in ("now", "before"))
                elapsed = time.perf_counter() - t0
                if len(rows) != n or written != len(writes):
                    short += 1
                if i:
                    times.append(elapsed * 1000)
            server = _backend(acur, stats, iterations, conn, cpu_start)
        if short:
            notes.append(f"{v.name}, N={n}: {short} statements claimed or wrote short")
        return times, server
    finally:
        conn.close()
        with admin.cursor() as cur:
            for definition in dropped:
                cur.execute(definition)
        admin.close()


def run_minimal(url: str, fused: bool, n: int, iterations: int, stats: bool,
                notes: list[str], table: str = "") -> tuple[list[float], Backend]:
    """ms per batch (the pair: claim + commit, complete + commit; fused: one
    statement), and the server's ms per batch."""
    from .minimal import TABLE
    table = table or TABLE
    claim, complete, both = _minimal_statements(table)
    conn = connect(url)
    conn.statement_timeout_ms = None  # (the minimal queue sends no SET LOCAL)
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            _fill(cur, table, max(ROWS_AT_LEAST, (iterations + 1) * n))
        times: list[float] = []
        ids: list[int] = []
        short = 0
        with conn.cursor() as cur, admin.cursor() as acur:
            for i in range(iterations + 1):
                if i == 1:
                    _stats_reset(acur, stats)
                    cpu_start = backend_cpu(conn)
                t0 = time.perf_counter()
                if fused or i == 0:
                    values = {"limit": n, "ids": arrays.numbers(ids)}
                    run_prepared(cur, both if fused else claim, values)
                    found = cur.fetchall()
                else:
                    run_prepared(cur, complete, {"ids": arrays.numbers(ids)})
                    run_prepared(cur, claim, {"limit": n})
                    found = cur.fetchall()
                elapsed = time.perf_counter() - t0
                ids = [r[0] for r in found]
                if len(ids) != n:
                    short += 1
                if i:
                    times.append(elapsed * 1000)
            server = _backend(acur, stats, iterations, conn, cpu_start)
        if short:
            kind = "minimal fused" if fused else "minimal pair"
            notes.append(f"{kind} on {table}, N={n}: {short} claims came back short")
        return times, server
    finally:
        conn.close()
        admin.close()


def has_stats(url: str) -> bool:
    """pg_stat_statements loaded in the server (then created in this database)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 'pg_stat_statements' = ANY(string_to_array("
                        "replace(current_setting('shared_preload_libraries'), ' ', ''), ','))")
            if not cur.fetchone()[0]:
                return False
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return True
    finally:
        conn.close()


def measure(url: str, say: Callable[[str], None], sizes: tuple[int, ...] = SIZES,
            iterations: int = ITERATIONS, rounds: int = ROUNDS,
            only: tuple[str, ...] = ()) -> Cost:
    """`url`: a database migrated by taskworker (the minimal table is made in it);
    `only`: the runs of these names (default: all)."""
    from .minimal import SCHEMA
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
        cur.execute(WIDE_SCHEMA)
        cur.execute("SELECT pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal")
        for (definition,) in cur.fetchall():
            cur.execute(definition.replace(" ON public.tasks ", f" ON {WIDE_TRIGGERS} "))
    conn.close()
    cost = Cost(tuple(sizes), iterations, rounds, has_stats(url))
    jobs: list[tuple[str, Callable[[int], tuple[list[float], Backend]]]] = [
        (MINIMAL_PAIR, lambda n: run_minimal(url, False, n, iterations, cost.stats, cost.notes)),
        (MINIMAL_FUSED, lambda n: run_minimal(url, True, n, iterations, cost.stats, cost.notes))]
    for name, table, _ in TABLES:
        jobs.append((name, lambda n, table=table: run_minimal(url, True, n, iterations,
                                                              cost.stats, cost.notes, table)))
    for v in VARIANTS:
        statement_text(v)  # (every edit still applies, before any run)
        jobs.append((v.name, lambda n, v=v: run_taskworker(url, v, n, iterations, cost.stats,
                                                           cost.notes)))
    if only:
        unknown = set(only) - {name for name, _ in jobs}
        if unknown:
            raise SystemExit(f"claimcost: no run named {', '.join(sorted(unknown))}")
        jobs = [(name, job) for name, job in jobs if name in only]
    for r in range(rounds):
        cost.load.append(os.getloadavg()[0])
        for n in sizes:
            for name, job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                say(f"claim cost: {name}, N={n} (round {r + 1}/{rounds})")
                times, server = job(n)
                s = cost.series.setdefault((name, n), Series())
                s.client_ms.extend(times)
                s.round_ms.append(statistics.median(times))
                if server.exec_ms is not None and server.plan_ms is not None:
                    s.server_ms.append(server.exec_ms)
                    s.plan_ms.append(server.plan_ms)
                if server.cpu_ms is not None:
                    s.cpu_ms.append(server.cpu_ms)
    return cost


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _range(values: list[float], n: int) -> str:
    return f"{min(values) * 1000 / n:.1f}–{max(values) * 1000 / n:.1f}" if values else "n/a"


def _delta(c: Cost, name: str, n: int, kind: str) -> str:
    value, base = c.per_task_us(name, n, kind), c.per_task_us("as sent", n, kind)
    return "" if value is None or base is None or name == "as sent" else f"{value - base:+.1f}"


def report(c: Cost) -> list[str]:
    loads = ", ".join(f"{v:.2f}" for v in c.load)
    cpu = any(s.cpu_ms for s in c.series.values())
    lines = [f"Per statement, per task (benchmarks/claimcost.py): one connection, claim N then "
             f"{c.iterations} statements each writing the last N outcomes and claiming N more, "
             f"{c.rounds} interleaved round{'' if c.rounds == 1 else 's'} (1-min load at each "
             f"round's start: {loads}). µs per task = ms per statement / N (the minimal pair: "
             "per batch, its two statements). client: median of every statement's wall time "
             "(round trip, server, commit), and the range of the rounds' medians"
             + ("; backend CPU: the server process's CPU time (schedstat) over the run, median "
                "of the runs and their range: the figure least moved by other load" if cpu else
                "; no backend CPU (the server is not on this machine)")
             + ("; server: pg_stat_statements' execution + planning (wall time in the server, "
                "without the commit), median of the runs, and of it planning" if c.stats else
                "; no server time (pg_stat_statements not loaded)"), ""]
    whats = {MINIMAL_PAIR: "the minimal queue's claim and completion, each its own commit",
             MINIMAL_FUSED: "the minimal pair as one statement: complete the last N, claim N",
             **{name: what for name, _, what in TABLES},
             **{v.name: v.what for v in VARIANTS}}
    for n in c.sizes:
        head = f"| N={n} | client µs/task | rounds |"
        rule = "| --- | ---: | --- |"
        if cpu:
            head += " backend CPU µs/task | runs | vs as sent |"
            rule += " ---: | --- | ---: |"
        if c.stats:
            head += " server µs/task | of it planning | vs as sent |"
            rule += " ---: | ---: | ---: |"
        lines += [head, rule]
        for name in whats:
            if (name, n) not in c.series:  # (not run: --only)
                continue
            s = c.series[name, n]
            row = f"| {name} | {_us(c.per_task_us(name, n))} | {_range(s.round_ms, n)} |"
            if cpu:
                row += (f" {_us(c.per_task_us(name, n, 'cpu'))} | {_range(s.cpu_ms, n)} | "
                        f"{_delta(c, name, n, 'cpu')} |")
            if c.stats:
                row += (f" {_us(c.per_task_us(name, n, 'server'))} | "
                        f"{_us(c.per_task_us(name, n, 'plan'))} | "
                        f"{_delta(c, name, n, 'server')} |")
            lines.append(row)
        lines.append("")
    lines += [f"- {name}: {what}" for name, what in whats.items()
              if any((name, n) in c.series for n in c.sizes)]
    lines += [f"- {note}" for note in c.notes]
    return lines


def main(argv: list[str] | None = None) -> int:
    from .databases import Server
    from .run import DEFAULT_URL
    from .taskworker_runs import migrate
    ap = argparse.ArgumentParser(prog="python -m benchmarks.claimcost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--iterations", type=int, default=ITERATIONS)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--only", default="", metavar="NAMES",
                    help="names of the runs to make, separated by ';' (names have commas; "
                         "default: all)")
    args = ap.parse_args(argv)
    server = Server(args.database_url)
    try:
        url = server.create("claimcost")
        migrate(url)
        cost = measure(url, lambda m: print(m, file=sys.stderr, flush=True),
                       tuple(int(s) for s in args.sizes.split(",")), args.iterations,
                       args.rounds, tuple(n for n in args.only.split(";") if n))
    finally:
        server.drop_all()
    print("\n".join(report(cost)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
