"""Issue 27, item 3 (a): what a table that keeps its history costs. With
10,000,000 finished rows kept (PRUNE_AFTER unset), no-op throughput, the busy
statement's cost and the dashboard's p95 should each be at least 0.9 of an
empty table's (ratio of medians of interleaved rounds; for the two latencies
empty / history, so that >= 0.9 is the target of all three).

    python -m benchmarks.history [--database-url URL] [--rows 10000000] [--rounds 3]
                                 [--tasks 100000] [--seconds 20] [--recent 10000]
                                 [--iterations 60] [--markdown FILE] [--keep]

Two databases of its own on the server the URL names, both made by `taskworker
migrate` (dropped at the end unless --keep): "empty", and "history", filled with
ROWS finished tasks by dashboard.POPULATE (about 97.9% done, 2% error, 0.1%
cancelled; 5 queues, one rare, 4 task names; short JSON payloads, 1% of them
5 kB; results and errors as a queue leaves them; none pending or in progress)
spread over 30 days that end an hour before the fill, 1,000,000 rows a
statement, then VACUUM ANALYZE and CHECKPOINT: a table that has been around,
as autovacuum (off on the benchmark's server) would have left it. Before the
rounds a dashboard runs on each until its indexer has copied every finished
task into taskworker_search (the backfill a first start on an old table does;
its time is reported), so that the rounds time the dashboard as it runs day
to day, not its first hours.

Each round measures every figure on both tables, one right after the other
(round 1: empty then history, round 2: history then empty, ...: a drift of
the machine's load falls on both alike):
  throughput  TASKS no-op tasks, one serve, WORKER_COUNT=100, FETCH_LIMIT unset,
              tasks/s from the rows' own timestamps (taskworker_runs.throughput)
  claim cost  claimcost.py's loop: taskworker's busy statement
              (claim_shares_completing, claims of 100, each statement writing the
              last claim's outcomes) on one connection, ITERATIONS statements; the
              median ms per statement (the client's clock), and the server
              process's CPU per statement where the server runs on this machine
  dashboard   a dashboard started, its indexer caught up, its sampler's first
              full count over and one untimed request per page made (a new
              process's first); then the page mix (dashboard.pages) sent open-loop
              at 100 requests/s for SECONDS (dashboard.send): p95 over all pages,
              and per page for the report. Both tables hold the same RECENT tasks of
              the last hour for it (a tenth pending, ten in progress, the rest
              finished): pages of a literally empty table have nothing to show
              (a task page would answer 404), while with the same live tasks the
              two differ only by the history (--recent 0: none)
After each measurement the rows it added are deleted (and their words in
taskworker_search, the indexer's position put back), and the table vacuumed
with INDEX_CLEANUP ON, so that both tables keep their size from one
measurement to the next and no dead index entries of one are left to the next.

Also the phase `history` of benchmarks.run (--only history, --history-rows ...).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import random
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg2

from . import baseline, claimcost, dashboard, processes
from . import taskworker_runs as tw
from .databases import Server, connect
from .processes import BenchError

ROWS = 10_000_000
CHUNK = 1_000_000  # rows per INSERT of the fill
DAYS = 30  # the fill's updated_at spans this many days
ROUNDS = 3
TASKS = 100_000
WORKERS = 100
BATCH = 100  # claim size of the statement loop
SECONDS = 20.0  # the dashboard's requests per round, at dashboard.RATE
RECENT = 10_000
# Free bytes a page needs for a new no-op task's row: 126 bytes, 128 aligned,
# which an insert asks the free space map for (it keeps a page's free space in
# steps of 32; pg_freespace shows the step).
ROOM = 128
TARGET = 0.9
DATABASES = ("empty", "history")
SIZES = """
SELECT c.relname, pg_relation_size(c.oid)
                  + coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)
FROM pg_class AS c WHERE c.oid IN ('tasks'::regclass, 'taskworker_search'::regclass)
UNION ALL
SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
FROM pg_index AS i WHERE i.indrelid IN ('tasks'::regclass, 'taskworker_search'::regclass)
ORDER BY 1
"""


@dataclass(frozen=True)
class Options:
    rows: int = ROWS
    rounds: int = ROUNDS
    tasks: int = TASKS
    seconds: float = SECONDS
    recent: int = RECENT
    iterations: int = claimcost.ITERATIONS


HELP = {
    "rows": "finished rows of the history table",
    "rounds": "interleaved rounds",
    "tasks": "no-op tasks per throughput run",
    "seconds": "seconds of dashboard requests per round and table",
    "recent": "the last hour's tasks on both tables while the dashboard is timed (0: none)",
    "iterations": "timed busy statements per claim-cost run",
}


@dataclass(frozen=True)
class Figure:
    key: str
    what: str
    unit: str
    higher_is_better: bool  # the ratio is history / empty, else empty / history
    target: bool = True  # one of the three


FIGURES = (
    Figure("throughput", f"no-op throughput (one serve, W={WORKERS}, FETCH_LIMIT unset)",
           "tasks/s", True),
    Figure("claim", f"claim cost: ms per statement of {BATCH} (client)", "ms", False),
    Figure("claim_cpu", "claim cost: server process CPU ms per statement", "ms", False,
           target=False),
    Figure("dashboard", "dashboard p95, all pages", "ms", False),
)


@dataclass
class History:
    options: Options
    code: str = ""
    values: dict[tuple[str, str], list[float | None]] = field(default_factory=dict)
    pages: dict[str, list[dashboard.Result]] = field(default_factory=dict)  # database
    order: list[tuple[str, ...]] = field(default_factory=list)  # per round
    sizes: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # db, when
    room: dict[tuple[str, str], tuple[int, int] | None] = field(default_factory=dict)
    backfill: dict[str, tuple[float, int]] = field(default_factory=dict)  # s, tasks
    seconds: dict[str, float] = field(default_factory=dict)  # fill, backfill, rounds, ...
    load: list[float] = field(default_factory=list)  # 1-min load at the start, the end
    notes: list[str] = field(default_factory=list)

    def median(self, figure: str, database: str) -> float | None:
        values = [v for v in self.values.get((figure, database), []) if v is not None]
        return statistics.median(values) if values else None

    def ratio(self, f: Figure) -> float | None:
        empty, history = self.median(f.key, "empty"), self.median(f.key, "history")
        if not empty or not history:
            return None
        return history / empty if f.higher_is_better else empty / history


def fill(url: str, rows: int, say: Callable[[str], None]) -> None:
    """The history: `rows` finished tasks by dashboard.POPULATE, spread over DAYS
    days that end an hour before now, so that the dashboard's recent tasks (the
    last hour's) all come after them in the indexer's (updated_at, id) order."""
    started = time.monotonic()
    params = dashboard.population(rows, pending=0, running=0,
                                  step=datetime.timedelta(days=DAYS) / rows,
                                  until=datetime.datetime.now(datetime.UTC)
                                  - datetime.timedelta(hours=1))
    tw.add_finished_rows(url, rows, dashboard.POPULATE, params, CHUNK,
                         lambda m: say(f"history: {m} ({time.monotonic() - started:.0f} s)"))
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    finally:
        conn.close()


def sizes(url: str) -> dict[str, int]:
    """Bytes of tasks and taskworker_search (each with its TOAST) and of each index."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(SIZES)
            return dict(cur.fetchall())
    finally:
        conn.close()


def room(url: str) -> tuple[int, int] | None:
    """Pages of tasks whose free space (the free space map VACUUM keeps) takes a
    new short task's row (ROOM bytes), and all its pages; None without
    pg_freespacemap. A new row goes into such a page before the table's end, so
    new tasks are spread over the history, one to a page, and a claim or
    completion of 100 touches ~100 pages (each a full-page image in the WAL at
    its first change after a checkpoint) instead of 2 or 3."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS pg_freespacemap")
            except psycopg2.Error:
                return None
            cur.execute("SELECT count(*) FILTER (WHERE avail >= %s), count(*) "
                        "FROM pg_freespace('tasks')", (ROOM,))
            pages, of = cur.fetchall()[0]
            return int(pages), int(of)
    finally:
        conn.close()


def free_port() -> int:
    """A port nobody listens on now: another benchmark's dashboard on a fixed port
    would answer for ours."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backfill(url: str, rows: int, say: Callable[[str], None]) -> tuple[float, int]:
    """A dashboard started on `url` until its indexer has caught up: seconds, tasks."""
    started = time.monotonic()
    proc = dashboard.start_dashboard(url, free_port())
    try:
        return dashboard.caught_up(url, proc, say, started, timeout=max(1800.0, rows / 1000))
    finally:
        proc.stop()


@contextlib.contextmanager
def restored(url: str, h: History) -> Iterator[None]:
    """Whatever the measurement inside adds to tasks (ids above the highest before
    it) is deleted afterwards, with the words the indexer copied of them, and the
    indexer's position is put back (or it would pass over the next round's recent
    tasks, older than the last ones it saw); then VACUUM with INDEX_CLEANUP ON (a
    few dead rows in a big table would otherwise leave their index entries to the
    next measurement; taskworker_search's few are left to its plain VACUUM). Not
    done when the measurement fails: that ends the run."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT coalesce(max(id), 0) FROM tasks), indexed_at, "
                        "indexed_id, watermark FROM taskworker_search_progress")
            top, *progress = cur.fetchall()[0]
    finally:
        conn.close()
    yield
    started = time.monotonic()
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM tasks WHERE id > %s", (top,))
            cur.execute("DELETE FROM taskworker_search WHERE task_id > %s", (top,))
            searched = cur.rowcount
            cur.execute("UPDATE taskworker_search_progress SET indexed_at = %s, "
                        "indexed_id = %s, watermark = %s", progress)
            cur.execute("VACUUM (INDEX_CLEANUP ON) tasks")
            if searched:  # (a few thousand of millions: its trigram index keeps them)
                cur.execute("VACUUM taskworker_search")
    finally:
        conn.close()
    h.seconds["cleanup"] = h.seconds.get("cleanup", 0.0) + time.monotonic() - started


def throughput(url: str, name: str, h: History) -> None:
    d = tw.throughput(url, h.options.tasks, WORKERS, None, truncate=False, checkpoint=True)
    h.values.setdefault(("throughput", name), []).append(d.rate)
    h.notes.extend(f"throughput, {name}: {note}" for note in d.notes)


def claim_cost(url: str, name: str, h: History) -> None:
    times, backend = claimcost.run_taskworker(url, claimcost.VARIANTS[0], BATCH,
                                              h.options.iterations, False, h.notes, keep=True)
    h.values.setdefault(("claim", name), []).append(statistics.median(times))
    h.values.setdefault(("claim_cpu", name), []).append(backend.cpu_ms)


def dashboard_p95(url: str, name: str, h: History, say: Callable[[str], None]) -> None:
    """The recent tasks added, a dashboard started, caught up (the recent tasks'
    words), then the page mix at dashboard.RATE for the round's seconds."""
    o = h.options
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(id), 0) FROM tasks")
            kept = cur.fetchall()[0][0]
            if o.recent:
                cur.execute(dashboard.POPULATE, dashboard.population(
                    o.recent, pending=o.recent // 10, running=min(10, o.recent // 10),
                    step=datetime.timedelta(hours=1) / o.recent))
            cur.execute("ANALYZE tasks")  # (what autovacuum would do after them)
            cur.execute("CHECKPOINT")  # (the last clean-up's writes not in the timing)
            cur.execute("SELECT min(id), max(id), (SELECT min(id) FROM tasks WHERE id > %s) "
                        "FROM tasks", (kept,))
            lowest, highest, recent = cur.fetchall()[0]
    finally:
        conn.close()
    # The tasks there: ids lowest..kept (the history, never deleted from) and
    # recent..highest; those between were the measurements' and are gone.
    blocks = [(lo, hi) for lo, hi in ((lowest, kept), (recent, highest))
              if lo is not None and hi is not None and lo <= hi]
    mix = dashboard.pages(highest or 0, lowest or 0, lambda: _any_id(blocks))
    if not blocks:  # (no task to show: a task page would answer 404)
        mix = [(label, path) for label, path in mix if label != "task page"]
    port = free_port()
    started = time.monotonic()
    proc = dashboard.start_dashboard(url, port)
    result = dashboard.Result()
    try:
        dashboard.caught_up(url, proc, say, started)
        counted = settled(url)
        if counted > 5:
            h.notes.append(f"dashboard, {name}: its sampler's first full count (a scan of "
                           f"tasks) ended {counted:.0f} s after the indexer caught up")
        for _, path in mix:  # (untimed: a new process's first page of each kind)
            dashboard.get(path(), port)
        dashboard.send(mix, result, dashboard.RATE, o.seconds, port)
    finally:
        proc.stop()
    h.pages.setdefault(name, []).append(result)
    everything = [v for values in result.latencies.values() for v in values]
    h.values.setdefault(("dashboard", name), []).append(
        dashboard.quantile(everything, 0.95) * 1000 if everything else None)
    if result.errors:
        h.notes.append(f"dashboard, {name}, round {len(h.pages[name])}: answers other than "
                       f"200: {result.errors}")


def settled(url: str, at_most: float = 600.0) -> float:
    """Seconds until no other session in `url`'s database runs a statement (seen
    three times in a row, 0.1 s apart; at least 1 s): a dashboard's sampler
    counts every task (a scan: seconds on millions of rows) when its first page is
    asked for, and then seldom (at most 2% of the time); the rounds time the
    pages as they answer between two counts, as most of the time."""
    started = time.monotonic()
    time.sleep(1)
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            quiet = 0
            while quiet < 3 and time.monotonic() - started < at_most:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                            "AND datname = current_database() AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'")
                quiet = quiet + 1 if cur.fetchall()[0][0] == 0 else 0
                time.sleep(0.1)
    finally:
        conn.close()
    return time.monotonic() - started


def _any_id(blocks: list[tuple[int, int]]) -> int:
    """An id drawn evenly from the ranges of ids in `blocks`."""
    i = random.randrange(sum(hi - lo + 1 for lo, hi in blocks))
    for lo, hi in blocks:
        if i <= hi - lo:
            return lo + i
        i -= hi - lo + 1
    raise AssertionError("unreachable")


def measure(urls: dict[str, str], o: Options, say: Callable[[str], None]) -> History:
    """`urls`: "empty" and "history", each a database migrated by taskworker, empty."""
    h = History(o, baseline.work_tree(), load=[os.getloadavg()[0]])
    t0 = time.monotonic()
    say(f"history: filling {o.rows:,} finished rows")
    fill(urls["history"], o.rows, say)
    h.seconds["fill"] = time.monotonic() - t0
    say(f"history: filled in {h.seconds['fill']:.0f} s")
    t0 = time.monotonic()
    for name in DATABASES:
        say(f"history: the dashboard's search backfill, {name}")
        h.backfill[name] = backfill(urls[name], o.rows, say)
        h.sizes[(name, "start")] = sizes(urls[name])
        h.room[(name, "start")] = room(urls[name])
    h.seconds["backfill"] = time.monotonic() - t0
    steps: list[tuple[str, Callable[[str, str], None]]] = [
        ("throughput", lambda url, name: throughput(url, name, h)),
        ("claim cost", lambda url, name: claim_cost(url, name, h)),
        ("dashboard", lambda url, name: dashboard_p95(url, name, h, say))]
    t0 = time.monotonic()
    for r in range(o.rounds):
        order = DATABASES if r % 2 == 0 else DATABASES[::-1]
        h.order.append(order)
        for what, step in steps:
            for name in order:
                say(f"history: {what}, {name} (round {r + 1}/{o.rounds})")
                with restored(urls[name], h):
                    step(urls[name], name)
    h.seconds["rounds"] = time.monotonic() - t0
    for name in DATABASES:
        h.sizes[(name, "end")] = sizes(urls[name])
        h.room[(name, "end")] = room(urls[name])
    h.load.append(os.getloadavg()[0])
    return h


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if unit == "tasks/s" else f"{value:.2f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _sizes_table(h: History) -> list[str]:
    names = sorted({n for sizes in h.sizes.values() for n in sizes})
    columns = [(name, when) for name in DATABASES for when in ("start", "end")]
    lines = ["| relation (MB; with its TOAST) | "
             + " | ".join(f"{name}, {'before' if when == 'start' else 'after'} the rounds"
                          for name, when in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for relation in names:
        lines.append(f"| {relation} | " + " | ".join(
            _mb(h.sizes.get(c, {}).get(relation)) for c in columns) + " |")
    return lines


def _pages_table(h: History) -> list[str]:
    merged: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, dict[str, int]] = {}
    for name, results in h.pages.items():
        for result in results:
            for label, values in result.latencies.items():
                merged.setdefault(label, {}).setdefault(name, []).extend(values)
            for label, n in result.errors.items():
                errors.setdefault(label, {})[name] = errors.get(label, {}).get(name, 0) + n
    lines = ["| page | requests empty / history | p50 ms empty | p50 ms history | "
             "p95 ms empty | p95 ms history | p95 empty / history | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label in [*merged, *(label for label in errors if label not in merged)]:
        by = merged.get(label, {})
        q = {(name, p): dashboard.quantile(by[name], p) * 1000 if by.get(name) else None
             for name in DATABASES for p in (0.5, 0.95)}
        empty, history = q[("empty", 0.95)], q[("history", 0.95)]
        ratio = empty / history if empty and history else None
        flag = " **" if ratio is not None and ratio < TARGET else ""
        lines.append(f"| {label} | {len(by.get('empty', []))} / {len(by.get('history', []))} | "
                     f"{_value(q[('empty', 0.5)], 'ms')} | {_value(q[('history', 0.5)], 'ms')} "
                     f"| {_value(empty, 'ms')} | {_value(history, 'ms')} | "
                     f"{_ratio(ratio)}{flag} | {errors.get(label) or ''} |")
    sent = {name: sum(r.sent for r in results) for name, results in h.pages.items()}
    late = {name: sum(r.late for r in results) for name, results in h.pages.items()}
    lines += ["", f"Requests sent: {sent}; sent late (the sender fell behind): {late}. "
                  f"** : p95 empty / history below {TARGET:g} on that page."]
    return lines


def report(h: History) -> list[str]:
    o = h.options
    backfill = "; ".join(f"{name}: {n:,} tasks in {s:.0f} s"
                         for name, (s, n) in h.backfill.items())
    order = "; ".join(f"{i + 1}: {' then '.join(names)}" for i, names in enumerate(h.order))
    took = ", ".join(f"{k} {v:,.0f} s" for k, v in h.seconds.items())
    lines = [f"## History: {o.rows:,} finished rows kept against an empty table "
             "(issue 27, item 3 (a); benchmarks/history.py)", "",
             f"- code: {h.code}",
             f"- load average (1 min) at start / end: {h.load[0]:.2f} / "
             f"{h.load[-1]:.2f} (other work on the machine adds noise)",
             f"- the history: {o.rows:,} finished tasks (dashboard.POPULATE: ~97.9% done, 2% "
             f"error, 0.1% cancelled; 5 queues, 4 task names; short JSON payloads, 1% of "
             f"5 kB), over {DAYS} days, {CHUNK:,} rows a statement, then VACUUM ANALYZE and "
             f"CHECKPOINT: {h.seconds.get('fill', 0):,.0f} s",
             f"- the dashboard's search backfill before the rounds (nothing else running): "
             f"{backfill}",
             f"- per round and table: {o.tasks:,} no-op tasks; the busy statement "
             f"{o.iterations} times; the dashboard's {len(dashboard.pages(0, 0))} pages at "
             f"{dashboard.RATE:g} requests/s for {o.seconds:g} s with {o.recent:,} recent "
             "tasks on both tables; each measurement's rows deleted after it, then VACUUM",
             f"- rounds (order of the tables): {order}",
             f"- time taken: {took} (cleanup: the DELETEs and VACUUMs, within the rounds)",
             f"- pages of tasks with room for a new no-op task's row (free space map, "
             f">= {ROOM} bytes), before / after the rounds: {_room(h)}: new rows go there "
             "before the table's end, one to a page, so that a claim or completion "
             "of 100 touches ~100 pages",
             "", *_sizes_table(h), ""]
    rounds = range(1, len(h.order) + 1)
    lines += ["| figure | table | " + " | ".join(f"round {r}" for r in rounds) + " | median |",
              "| --- | --- |" + " ---: |" * (len(h.order) + 1)]
    for f in FIGURES:
        for name in DATABASES:
            each = " | ".join(_value(v, f.unit) for v in h.values.get((f.key, name), []))
            lines.append(f"| {f.what} ({f.unit}) | {name} | {each} | "
                         f"{_value(h.median(f.key, name), f.unit)} |")
    lines += ["", f"Claim cost per task: empty {_per_task(h, 'empty')} µs, history "
                  f"{_per_task(h, 'history')} µs (medians / {BATCH}).", ""]
    verdicts = []
    for f in FIGURES:
        ratio = h.ratio(f)
        kind = "history / empty" if f.higher_is_better else "empty / history"
        if not f.target:
            verdicts.append(f"- ({f.what}: {kind} {_ratio(ratio)}; not a target, but the "
                            "figure least moved by other load on the machine)")
            continue
        verdict = "n/a" if ratio is None else ("met" if ratio >= TARGET else "NOT met")
        verdicts.append(f"- {f.what}: {kind} {_ratio(ratio)} (target >= {TARGET:g}) -> "
                        f"{verdict}")
    lines += [f"Targets (ratio of medians, >= {TARGET:g}):", *verdicts, "",
              "Dashboard per page, every round's requests:", "", *_pages_table(h)]
    if h.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in h.notes)]
    return lines


def _room(h: History) -> str:
    def one(name: str, when: str) -> str:
        r = h.room.get((name, when))
        return "n/a (no pg_freespacemap)" if r is None else f"{r[0]:,} of {r[1]:,}"
    return "; ".join(f"{name} {one(name, 'start')} / {one(name, 'end')}" for name in DATABASES)


def _per_task(h: History, name: str) -> str:
    value = h.median("claim", name)
    return "n/a" if value is None else f"{value * 1000 / BATCH:.1f}"


def add_options(ap: argparse._ActionsContainer, prefix: str = "") -> None:
    """--ROWS etc. (Options' fields, each typed as its default), `prefix` before
    each name (benchmarks.run: "history-")."""
    for f in dataclasses.fields(Options):
        default = getattr(Options(), f.name)
        ap.add_argument(f"--{prefix}{f.name}", type=type(default), default=default,
                        help=f"{HELP[f.name]} (default {default:,})")


def options_from(args: argparse.Namespace, prefix: str = "") -> Options:
    o = Options(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(Options)})
    if min(o.rows, o.rounds, o.tasks, o.iterations) < 1 or o.seconds <= 0 or o.recent < 0:
        raise SystemExit("history: --rows, --rounds, --tasks and --iterations must be at "
                         "least 1, --seconds above 0, --recent at least 0")
    return o


def main(argv: list[str] | None = None) -> int:
    from .run import DEFAULT_URL
    ap = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
                    help="server to use (a superuser URL; its two databases are made there)")
    add_options(ap)
    ap.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the two databases (named on "
                    "stderr; python -m benchmarks.run --drop-stale drops them)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    options = options_from(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def say(message: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)
    server = Server(args.database_url)
    started = time.monotonic()
    try:
        urls = {name: server.create(f"history_{name}") for name in DATABASES}
        for url in urls.values():
            tw.migrate(url)
        result = measure(urls, options, say)
    except BenchError as exc:
        say(f"history failed: {exc}")
        return 1
    finally:
        processes.stop_all()
        if args.keep:
            say(f"kept: {', '.join(server.created)}")
        else:
            failed = server.drop_all()
            if failed:
                say(f"could not drop: {', '.join(failed)} (python -m benchmarks.run "
                    "--drop-stale)")
        processes.remove_workdir()
    result.seconds["total"] = time.monotonic() - started
    lines = report(result)
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
