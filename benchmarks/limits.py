"""Part 15's rate limits and concurrency per key, measured
(python -m benchmarks.limits):

  rate   a per-second rate limit shared by 3 serve processes (WORKER_COUNT=20),
         a backlog of rate-limited no-op tasks: the starts noted by the handlers
         (their own clocks), the most in any 1-second window (sliding) against
         the limit, and the rate reached over the run against the limit
  keys   3 serve processes (WORKER_COUNT=50), tasks of 100 cold keys
         (max_running_per_key=1, no-op), with and without one hot key saturated
         by a backlog of its own (20,000 tasks of 50 ms, one at a time): the
         cold tasks' rate (first to last completion, from their rows'
         updated_at), interleaved rounds, ratio of medians (target >= 0.9)

  claim  the statement alone: one claim_keyed of 100 tasks of the cold keys
         (rolled back, so each sees the same table), with and without the hot
         key, interleaved rounds, median ms (target: at most 1.1 times)

The no-op path with neither in use is the baseline phase of benchmarks.run
(`--only baseline --baseline REF`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from . import taskworker_runs as tw
from .databases import Server, connect
from .processes import Proc, workdir

TASKS = "benchmarks.limit_tasks"
COLD_KEYS = 100
KEYED = """
INSERT INTO tasks (task, format, arguments, concurrency_key)
SELECT 'bench_keyed', 3, jsonb_build_object('args', jsonb_build_array(k, %s::float8),
                                            'kwargs', '{}'::jsonb), k
FROM (SELECT %s || (n %% %s) AS k FROM generate_series(1, %s) AS n) AS keys
"""


def start(url: str, workers: int, processes: int, **env: object) -> list[Proc]:
    procs = [tw.start_serve(url, workers, None, handler=None, task_modules=TASKS, **env)
             for _ in range(processes)]
    tw.wait_ready(url, procs)
    return procs


def stop(procs: list[Proc]) -> None:
    for p in procs:
        p.stop()


def query(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple]:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def wait_done(url: str, where: str, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(url, f"SELECT count(*) FROM tasks WHERE status = 'done' AND {where}")[0][0] >= n:
            return True
        time.sleep(0.2)
    return False


def most_in_window(times: list[float], window: float) -> int:
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def run_rate(url: str, limit: int, seconds: float) -> list[str]:
    n = int(limit * seconds)
    path = os.path.join(workdir("limits"), "starts.txt")
    if os.path.exists(path):
        os.remove(path)
    query(url, "TRUNCATE tasks")
    query(url, "INSERT INTO tasks (task, payload) SELECT 'bench_rated', '' "
               "FROM generate_series(1, %s)", (n,))
    procs = start(url, 20, 3, bench_rate_limit=f"{limit}/s",
                  bench_starts_file=path)
    try:
        finished = wait_done(url, "task = 'bench_rated'", n, seconds * 3 + 30)
    finally:
        stop(procs)
    with open(path) as f:
        times = sorted(float(line) for line in f if line.strip())
    # Steady rate: the first window's starts go at once (every token is free),
    # so the rate is the starts after them over the time they took.
    span = times[-1] - times[0] if len(times) > limit else 0.0
    rate = (len(times) - limit) / span if span else 0.0
    worst = most_in_window(times, 1.0)
    return [f"Rate limit {limit}/s shared by 3 serve processes (WORKER_COUNT=20), {n:,} no-op "
            f"tasks: {len(times):,} starts{'' if finished else ' (NOT all done in time)'}",
            "",
            f"- most starts in any 1-second window (sliding, handlers' clocks): {worst} "
            f"(limit {limit}: {'held' if worst <= limit else 'EXCEEDED'})",
            f"- steady rate (the starts after the first window's, over the run): "
            f"{rate:,.1f} starts/s, {rate / limit:.2f} of the limit "
            f"(the start guard allows at most {1 / 1.05:.2f})"]


def keyed_run(url: str, with_hot: bool, cold: int) -> float | None:
    query(url, "TRUNCATE tasks")
    query(url, "TRUNCATE taskworker_keys")
    if with_hot:
        query(url, KEYED, (0.05, "hot", 1, 20_000))
    query(url, KEYED, (0.0, "cold-", COLD_KEYS, cold))
    query(url, "ANALYZE tasks")
    procs = start(url, 50, 3)
    try:
        if not wait_done(url, "concurrency_key LIKE 'cold-%%'", cold, 300):
            return None
    finally:
        for p in procs:
            p.stop(timeout=5)
    done, span = query(url, "SELECT count(*), extract(epoch FROM max(updated_at) - "
                            "min(updated_at)) FROM tasks WHERE status = 'done' "
                            "AND concurrency_key LIKE 'cold-%%'")[0]
    return (done - 1) / float(span) if span else None


def run_keys(url: str, cold: int, rounds: int) -> list[str]:
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for hot in ((False, True) if r % 2 == 0 else (True, False)):
            rate = keyed_run(url, hot, cold)
            print(f"  round {r + 1} {'with' if hot else 'without'} the hot key: "
                  f"{rate or 0:,.0f} cold tasks/s", flush=True)
            if rate:
                rates[hot].append(rate)
    a, b = (statistics.median(rates[k]) if rates[k] else 0.0 for k in (True, False))
    return [f"{cold:,} tasks of {COLD_KEYS} cold keys (max_running_per_key=1, no-op), 3 serve "
            f"processes (WORKER_COUNT=50), with and without a hot key saturated by 20,000 "
            f"tasks of 50 ms, {rounds} interleaved rounds, medians", "",
            "| run | cold tasks/s (median) | each run |", "| --- | ---: | --- |",
            f"| without the hot key | {b:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[False])} |",
            f"| with the hot key | {a:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[True])} |",
            "", f"- with / without: {a / b if b else 0:.2f} (target >= 0.9)"]


def claim_time(url: str, hot: bool, cold: int, repeats: int) -> float:
    """Median milliseconds of one claim_keyed of 100 tasks (sent and rolled back,
    so every claim sees the same table) over `cold` tasks of the cold keys, with
    or without the hot key (20,000 pending tasks and one running)."""
    from taskworker.store import tasks as store
    from taskworker.store.database import Direct

    query(url, "TRUNCATE tasks")
    query(url, "TRUNCATE taskworker_keys")
    if hot:
        query(url, KEYED, (0.05, "hot", 1, 20_000))
        query(url, "UPDATE tasks SET status = 'in_progress', locked_by = 'bench', "
                   "locked_until = now() + interval '1 hour' WHERE id = (SELECT min(id) "
                   "FROM tasks WHERE concurrency_key = 'hot')")
    query(url, KEYED, (0.0, "cold-", COLD_KEYS, cold))
    query(url, "ANALYZE tasks")
    served = store.Served(None, ["bench_keyed"], {}, [], {}, 0)
    conn = connect(url)
    db = Direct(conn)
    times = []
    try:
        conn.autocommit = False
        for n in range(repeats + 1):  # (the first makes the keys' rows, and is kept)
            start = time.perf_counter()
            got = store.claim_keyed(db, holder="bench:1:x", limit=100, lease=60, served=served,
                                    per_key={"bench_keyed": 1}, after=None)
            took = time.perf_counter() - start
            if n == 0:
                conn.commit()
                continue
            conn.rollback()
            assert len(got.rows) == COLD_KEYS, len(got.rows)
            times.append(took * 1000)
    finally:
        conn.close()
    return statistics.median(times)


def run_claim(url: str, cold: int, rounds: int, repeats: int) -> list[str]:
    got: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for hot in ((False, True) if r % 2 == 0 else (True, False)):
            got[hot].append(claim_time(url, hot, cold, repeats))
    a, b = (statistics.median(got[k]) for k in (True, False))
    return [f"One claim_keyed of 100 tasks over {cold:,} tasks of {COLD_KEYS} cold keys, with and "
            f"without a saturated hot key (20,000 pending, one running), {rounds} interleaved "
            f"rounds of {repeats} claims, median ms", "",
            f"- without the hot key: {b:.2f} ms ({', '.join(f'{x:.2f}' for x in got[False])})",
            f"- with the hot key: {a:.2f} ms ({', '.join(f'{x:.2f}' for x in got[True])})",
            f"- cost with / without: {a / b:.2f} (target <= 1.1)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--limit", type=int, default=200, help="starts per second")
    ap.add_argument("--seconds", type=float, default=20, help="of rate-limited backlog")
    ap.add_argument("--cold", type=int, default=20_000, help="cold keys' tasks")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("rate", "keys", "claim"))
    args = ap.parse_args()
    server = Server(args.database_url)
    try:
        url = server.create("limits")
        tw.migrate(url)
        lines: list[str] = []
        if args.only in (None, "rate"):
            lines += run_rate(url, args.limit, args.seconds) + [""]
        if args.only in (None, "claim"):
            lines += run_claim(url, args.cold, args.rounds, 200) + [""]
        if args.only in (None, "keys"):
            lines += run_keys(url, args.cold, args.rounds)
        print("\n".join(lines))
    finally:
        server.drop_all()


if __name__ == "__main__":
    main()
