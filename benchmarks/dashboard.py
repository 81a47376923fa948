"""The dashboard on a table of 1,000,000 tasks: every page at 100 requests a
second, latency percentiles per page (text searches through the search side
table, once the dashboard's indexer has caught up: how long that backfill took
is reported); and what migration 008 costs the hot path (claim and completion),
as no-op throughput with its index on tasks and without it, and with a dashboard
running (its indexer copying what finishes), on short and on ~400-character JSON
payloads.

The table: 95% done, 2% error, 0.1% cancelled, 20,000 pending and 100 running,
5 queues (one rare), 4 task names, 1% of payloads 5 kB long. One `taskworker
dashboard` answers; requests are sent open-loop (each at its own time, whatever
the others take) by threads of this process, spread over the pages and the
common filters, the 1,000th page by keyset included.
"""
from __future__ import annotations

import datetime
import http.client
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import taskworker_runs as tw
from .databases import connect
from .processes import BenchError, Proc, workdir

ROWS = 1_000_000
PENDING = 20_000
RATE = 100.0  # requests per second
SECONDS = 30.0
PORT = 18731
POPULATE = """
INSERT INTO tasks (payload, status, result, error, queue, task, attempts, run_at, locked_by,
                   locked_until, created_at, updated_at)
SELECT CASE WHEN n %% 100 = 7 THEN repeat('long payload ' || n || ' ', 400)
            ELSE '{"order": ' || n || ', "email": "user' || (n %% 5000) || '@example.com"}' END,
       s.status,
       CASE WHEN s.status = 'done' THEN '{"ok": true, "n": ' || n || '}' END,
       CASE WHEN s.status = 'error' THEN 'ValueError: bad input ' || (n %% 7) END,
       CASE WHEN n %% 1000 = 3 THEN 'rare'
            WHEN n %% 10 < 5 THEN 'default' WHEN n %% 10 < 8 THEN 'emails'
            WHEN n %% 10 < 9 THEN 'images' ELSE 'reports' END,
       CASE n %% 4 WHEN 0 THEN NULL WHEN 1 THEN 'send_email' WHEN 2 THEN 'resize'
            ELSE 'report' END,
       CASE WHEN s.status IN ('pending', 'cancelled') THEN 0 ELSE 1 END,
       t.at,
       CASE WHEN s.status = 'in_progress' THEN 'bench:1:abcd' END,
       CASE WHEN s.status = 'in_progress' THEN now() + interval '1 hour' END,
       t.at,
       t.at + interval '2 s'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
CROSS JOIN LATERAL (SELECT CASE
    WHEN n > %(rows)s - %(pending)s THEN 'pending'
    WHEN n > %(rows)s - %(pending)s - %(running)s THEN 'in_progress'
    WHEN n %% 50 = 1 THEN 'error'
    WHEN n %% 997 = 2 THEN 'cancelled'
    ELSE 'done' END AS status) AS s
CROSS JOIN LATERAL (SELECT coalesce(%(until)s::timestamptz, now())
                           - (%(rows)s - n) * %(step)s::interval AS at) AS t
"""


def population(rows: int, pending: int = PENDING, running: int = 100,
               step: datetime.timedelta = datetime.timedelta(milliseconds=7),
               until: datetime.datetime | None = None) -> dict[str, object]:
    """POPULATE's parameters for rows 1..`rows` (a statement may insert a part of
    them: "first" and "last" are set here to all): the newest `pending` pending,
    the `running` before them in progress, the rest finished; created `step`
    apart, the newest at `until` (None: now())."""
    return {"rows": rows, "first": 1, "last": rows, "pending": pending, "running": running,
            "step": step, "until": until}


INDEXES_008 = {  # what 008 adds ON tasks (its search index is a table of its own)
    "tasks_finished_at_idx":
        "CREATE INDEX tasks_finished_at_idx ON tasks (updated_at, id) "
        "WHERE status IN ('done', 'error', 'cancelled')",
}
PAYLOADS = {  # the no-op runs' payloads: 'task N', and a JSON order of ~400 characters
    "short": tw.INSERT_PENDING,
    "JSON ~400 chars": """
WITH ins AS (
    INSERT INTO tasks (payload)
    SELECT '{"order": ' || n || ', "customer": {"name": "Customer ' || n || '", "email": "user'
           || (n %% 5000) || '@example.com", "address": "' || n || ' Long Street, Springfield"}, '
           || '"items": [' || repeat('{"sku": "SKU-' || (n %% 977) || '", "qty": 2}, ', 6)
           || '{"sku": "gift"}], "note": "' || md5(n::text) || '"}'
    FROM generate_series(1, %s) AS n
    RETURNING id
)
SELECT min(id), max(id), count(*) FROM ins
""",
}
VARIANTS = ("with 008", "without 008's index on tasks", "with 008 and a dashboard running")


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # page -> seconds
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    late: int = 0  # requests the sender could not send on time (it fell behind)
    hot_path: dict[str, list[float]] = field(default_factory=dict)  # payload, variant -> tasks/s
    backfill: float | None = None  # seconds the indexer took to index the table
    backfilled: int = 0  # finished tasks it indexed
    notes: list[str] = field(default_factory=list)


def pages(highest: int, lowest: int,
          task_id: Callable[[], int] | None = None) -> list[tuple[str, Callable[[], str]]]:
    """The mix of requests: (label, a function giving the next URL). The task page
    shows a task between `lowest` and `highest`, or one `task_id` gives (where ids
    between them were deleted)."""
    page_1000 = highest - 50 * 999

    def random_task() -> str:
        return f"/tasks/{task_id() if task_id else random.randint(lowest, highest)}"

    fixed = [
        ("overview", "/"), ("overview live region", "/overview/live"),
        ("tasks, newest", "/tasks"), ("tasks, page 1,000 (keyset)", f"/tasks?before={page_1000}"),
        ("tasks ?status=error", "/tasks?status=error"),
        ("tasks ?status=pending", "/tasks?status=pending"),
        ("tasks ?queue=emails&task=resize", "/tasks?queue=emails&task=resize"),
        ("tasks ?queue=rare (window)", "/tasks?queue=rare"),
        ("tasks ?q=user4242@ (rare text)", "/tasks?q=user4242%40"),
        ("tasks ?q=example (common text)", "/tasks?q=example"),
        ("tasks ?status=error&q=input+3", "/tasks?status=error&q=input+3"),
        ("schedules", "/schedules"),
    ]
    return [(label, lambda u=u: u) for label, u in fixed] + [("task page", random_task)]


def get(path: str, port: int = PORT) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def load(url: str, say: Callable[[str], None]) -> tuple[int, int]:
    """Fill the table; its lowest and highest id."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            say(f"dashboard: inserting {ROWS:,} tasks")
            cur.execute(POPULATE, population(ROWS))
            cur.execute("VACUUM ANALYZE tasks")
            cur.execute("SELECT min(id), max(id) FROM tasks")
            lowest, highest = cur.fetchone()
    finally:
        conn.close()
    return lowest, highest


def caught_up(url: str, proc: Proc, say: Callable[[str], None],
              started: float, timeout: float = 1800.0) -> tuple[float, int]:
    """Wait until the dashboard's indexer has copied every finished task into
    taskworker_search; the seconds it took since `started` (monotonic), and how many.
    The side table is counted once, at the end: on millions of rows a count at each
    look would compete with the indexer it times."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM (SELECT 1 FROM tasks t, "
                            "taskworker_search_progress p WHERE t.status IN ('done', 'error', "
                            "'cancelled') AND t.updated_at >= p.indexed_at AND "
                            "(t.updated_at, t.id) > (p.indexed_at, "
                            "p.indexed_id) LIMIT 1) AS waiting")
                waiting = cur.fetchone()[0]
                took = time.monotonic() - started
                if waiting and proc.alive() and took <= timeout:
                    time.sleep(0.5)
                    continue
                cur.execute("SELECT count(*) FROM taskworker_search")
                indexed = cur.fetchone()[0]
                if waiting:
                    raise BenchError(f"the search index did not catch up ({indexed:,} "
                                     f"indexed): {proc.output()[-500:]}")
                say(f"dashboard: search index caught up: {indexed:,} tasks in {took:.1f}s")
                # What autovacuum (off on the benchmark's server) does before long:
                # without statistics on words the planner reads the trigram index
                # for a common word too (seconds, measured).
                cur.execute("VACUUM ANALYZE taskworker_search")
                return took, indexed
    finally:
        conn.close()


def start_dashboard(url: str, port: int) -> Proc:
    """`taskworker dashboard` on `port`, answering."""
    proc = Proc("dashboard", [sys.executable, "-m", "taskworker", "dashboard", "--port",
                              str(port)], tw.env_for(url, log_level="WARNING"),
                cwd=workdir("cwd"))
    deadline = time.monotonic() + 30
    while True:
        try:
            if get("/", port)[0] == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline or not proc.alive():
            output = proc.output()[-500:]
            proc.stop()
            raise BenchError(f"the dashboard did not answer: {output}")
        time.sleep(0.2)


def send(mix: list[tuple[str, Callable[[], str]]], result: Result, rate: float = RATE,
         seconds: float = SECONDS, port: int = PORT) -> None:
    """Open loop: request i is sent at i / rate seconds, by a pool of threads,
    whatever the ones before it take (a closed loop would wait for a slow page and
    hide it); `mix`'s pages in turn. Latencies of answers 200 go into
    `result.latencies` by page, other answers into `result.errors`."""
    lock = threading.Lock()

    def one(label: str, path: str) -> None:
        try:
            status, took = get(path, port)
        except OSError:
            status, took = 0, 0.0
        with lock:
            if status == 200:
                result.latencies.setdefault(label, []).append(took)
            else:
                result.errors[label] = result.errors.get(label, 0) + 1

    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.05:
                result.late += 1
            label, path = mix[i % len(mix)]
            pool.submit(one, label, path())
            result.sent += 1


def measure_pages(url: str, say: Callable[[str], None], result: Result) -> None:
    lowest, highest = load(url, say)
    started = time.monotonic()
    proc = start_dashboard(url, PORT)
    try:
        result.backfill, result.backfilled = caught_up(url, proc, say, started)
        time.sleep(3)  # the sampler's first full count
        mix = pages(highest, lowest)
        say(f"dashboard: {RATE:g} requests/s for {SECONDS:g}s over {len(mix)} pages")
        send(mix, result)
    finally:
        proc.stop()


def measure_hot_path(url: str, say: Callable[[str], None], result: Result,
                     rounds: int = 3, n: int = 50_000) -> None:
    """No-op throughput (one serve, W=100 F=100, `n` tasks) with migration 008's
    index on tasks, without it, and with it and a dashboard running (whose indexer
    copies the finished tasks' words into taskworker_search meanwhile), on each
    payload shape, interleaved: what 008 and a dashboard cost claims and completions."""
    conn = connect(url)
    try:
        for r in range(rounds):
            for shape, insert in PAYLOADS.items():
                for variant in VARIANTS:
                    with conn.cursor() as cur:
                        for name, create in INDEXES_008.items():
                            cur.execute(f"DROP INDEX IF EXISTS {name}")
                            if variant.startswith("with "):
                                cur.execute(create)
                        cur.execute("TRUNCATE taskworker_search")
                        cur.execute("UPDATE taskworker_search_progress SET indexed_at = "
                                    "'-infinity', indexed_id = 0, watermark = '-infinity'")
                    dashboard = start_dashboard(url, PORT + 1) if "dashboard" in variant \
                        else None
                    try:
                        drain = tw.throughput(url, n, 100, 100, checkpoint=True, insert=insert)
                    finally:
                        if dashboard is not None:
                            dashboard.stop()
                    label = f"{shape} payloads, {variant}"
                    result.hot_path.setdefault(label, []).append(drain.rate or 0.0)
                    result.notes.extend(drain.notes)
                    say(f"dashboard: hot path, {label}, round {r + 1}: "
                        f"{drain.rate or 0:,.0f} tasks/s")
    finally:
        conn.close()


def run(pages_url: str, hot_url: str, say: Callable[[str], None]) -> Result:
    result = Result()
    measure_pages(pages_url, say, result)
    measure_hot_path(hot_url, say, result)
    return result


def quantile(values: list[float], q: float) -> float:
    """The value below which a share `q` of `values` lies (the nearest rank above)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float], q: float) -> str:
    return f"{quantile(values, q) * 1000:.1f}" if values else "-"


def report(result: Result) -> list[str]:
    lines = [f"## Dashboard: {ROWS:,} tasks, {RATE:g} requests/s for {SECONDS:g}s",
             "", "| Page | Requests | p50 ms | p95 ms | p99 ms | max ms | Errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, values in result.latencies.items():
        lines.append(f"| {label} | {len(values)} | {_ms(values, 0.5)} | {_ms(values, 0.95)} | "
                     f"{_ms(values, 0.99)} | {max(values) * 1000:.1f} | "
                     f"{result.errors.get(label, 0)} |")
    for label, n in result.errors.items():
        if label not in result.latencies:
            lines.append(f"| {label} | 0 | - | - | - | - | {n} |")
    everything = [v for values in result.latencies.values() for v in values]
    lines += ["", f"All pages: p50 {_ms(everything, 0.5)} ms, p95 {_ms(everything, 0.95)} ms, "
                  f"p99 {_ms(everything, 0.99)} ms; {result.sent} sent, "
                  f"{result.late} sent late (the load generator fell behind)."]
    if result.backfill is not None:
        lines += ["", f"The dashboard's indexer copied the words of {result.backfilled:,} "
                      f"finished tasks into taskworker_search in {result.backfill:.0f}s "
                      "(from its start, while nothing else ran); the pages were timed after."]
    if result.hot_path:
        lines += ["", "No-op throughput of one serve (W=100 F=100, 50,000 tasks), median of "
                      "rounds interleaved:", ""]
        for variant, rates in result.hot_path.items():
            lines.append(f"- {variant}: {statistics.median(rates):,.0f} tasks/s "
                         f"({', '.join(f'{r:,.0f}' for r in rates)})")
    return lines
