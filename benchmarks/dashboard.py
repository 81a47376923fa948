"""The dashboard on a table of 1,000,000 tasks: every page at 100 requests a
second, latency percentiles per page; and what migration 008's indexes cost the
hot path (claim and completion), as no-op throughput with and without them.

The table: 95% done, 2% error, 0.1% cancelled, 20,000 pending and 100 running,
5 queues (one rare), 4 task names, 1% of payloads 5 kB long. One `taskworker
dashboard` answers; requests are sent open-loop (each at its own time, whatever
the others take) by threads of this process, spread over the pages and the
common filters, the 1,000th page by keyset included.
"""
from __future__ import annotations

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
       now() - (%(rows)s - n) * interval '7 ms',
       CASE WHEN s.status = 'in_progress' THEN 'bench:1:abcd' END,
       CASE WHEN s.status = 'in_progress' THEN now() + interval '1 hour' END,
       now() - (%(rows)s - n) * interval '7 ms',
       now() - (%(rows)s - n) * interval '7 ms' + interval '2 s'
FROM generate_series(1, %(rows)s) AS n
CROSS JOIN LATERAL (SELECT CASE
    WHEN n > %(rows)s - %(pending)s THEN 'pending'
    WHEN n > %(rows)s - %(pending)s - 100 THEN 'in_progress'
    WHEN n %% 50 = 1 THEN 'error'
    WHEN n %% 997 = 2 THEN 'cancelled'
    ELSE 'done' END AS status) AS s
"""
INDEXES_008 = {
    "tasks_finished_text_idx":
        "CREATE INDEX tasks_finished_text_idx ON tasks USING gin ((left(coalesce(payload, ''), "
        "1000) || ' ' || left(coalesce(error, ''), 1000)) gin_trgm_ops) "
        "WHERE status IN ('done', 'error', 'cancelled')",
    "tasks_finished_at_idx":
        "CREATE INDEX tasks_finished_at_idx ON tasks (updated_at) "
        "WHERE status IN ('done', 'error', 'cancelled')",
}


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # page -> seconds
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    late: int = 0  # requests the sender could not send on time (it fell behind)
    hot_path: dict[str, list[float]] = field(default_factory=dict)  # with/without -> tasks/s
    notes: list[str] = field(default_factory=list)


def pages(highest: int, lowest: int) -> list[tuple[str, Callable[[], str]]]:
    """The mix of requests: (label, a function giving the next URL)."""
    page_1000 = highest - 50 * 999

    def random_task() -> str:
        return f"/tasks/{random.randint(lowest, highest)}"

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


def get(path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
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
            cur.execute(POPULATE, {"rows": ROWS, "pending": PENDING})
            cur.execute("VACUUM ANALYZE tasks")
            cur.execute("SELECT min(id), max(id) FROM tasks")
            lowest, highest = cur.fetchone()
    finally:
        conn.close()
    return lowest, highest


def measure_pages(url: str, say: Callable[[str], None], result: Result) -> None:
    lowest, highest = load(url, say)
    proc = Proc("dashboard", [sys.executable, "-m", "taskworker", "dashboard", "--port",
                              str(PORT)], tw.env_for(url, log_level="WARNING"),
                cwd=workdir("cwd"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get("/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or not proc.alive():
                raise BenchError(f"the dashboard did not answer: {proc.output()[-500:]}")
            time.sleep(0.2)
        time.sleep(3)  # the sampler's first full count
        mix = pages(highest, lowest)
        lock = threading.Lock()

        def one(label: str, path: str) -> None:
            try:
                status, took = get(path)
            except OSError:
                status, took = 0, 0.0
            with lock:
                if status == 200:
                    result.latencies.setdefault(label, []).append(took)
                else:
                    result.errors[label] = result.errors.get(label, 0) + 1

        say(f"dashboard: {RATE:g} requests/s for {SECONDS:g}s over {len(mix)} pages")
        with ThreadPoolExecutor(max_workers=64) as pool:
            start = time.perf_counter()
            for i in range(int(RATE * SECONDS)):
                due = start + i / RATE
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -0.05:
                    result.late += 1
                label, path = mix[i % len(mix)]
                pool.submit(one, label, path())
                result.sent += 1
    finally:
        proc.stop()


def measure_hot_path(url: str, say: Callable[[str], None], result: Result,
                     rounds: int = 3, n: int = 50_000) -> None:
    """No-op throughput (one serve, W=100 F=100, `n` tasks) with migration 008's
    indexes and without them, interleaved: what they cost claims and completions."""
    conn = connect(url)
    try:
        for r in range(rounds):
            for variant in ("with 008's indexes", "without them"):
                with conn.cursor() as cur:
                    for name, create in INDEXES_008.items():
                        cur.execute(f"DROP INDEX IF EXISTS {name}")
                        if variant.startswith("with "):
                            cur.execute(create)
                drain = tw.throughput(url, n, 100, 100, checkpoint=True)
                result.hot_path.setdefault(variant, []).append(drain.rate or 0.0)
                result.notes.extend(drain.notes)
                say(f"dashboard: hot path {variant}, round {r + 1}: {drain.rate or 0:,.0f} tasks/s")
    finally:
        conn.close()


def run(pages_url: str, hot_url: str, say: Callable[[str], None]) -> Result:
    result = Result()
    measure_pages(pages_url, say, result)
    measure_hot_path(hot_url, say, result)
    return result


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


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
    if result.hot_path:
        lines += ["", "No-op throughput of one serve (W=100 F=100, 50,000 tasks), median of "
                      "rounds interleaved:", ""]
        for variant, rates in result.hot_path.items():
            lines.append(f"- {variant}: {statistics.median(rates):,.0f} tasks/s "
                         f"({', '.join(f'{r:,.0f}' for r in rates)})")
    return lines
