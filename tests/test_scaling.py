"""Part 3, staying fast at scale, checked by behaviour rather than by timing:
claims sized to the free workers, claim and housekeeping statements that stay on
their partial indexes in a big table, memory that does not grow with the tasks
processed, and claims and completions batched into few transactions.
"""
from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import (
    create_runs_table,
    handler_env,
    query,
    query_free,
    stop_all,
    tail,
    wait_until,
)
from proc import ServeFactory, ServeProcess, importable

from taskworker.store.sql import QUERIES

NOOP_MODULE = '''\
"""A handler that does nothing, for the scaling tests."""


def noop(payload):
    return None
'''



@pytest.fixture
def noop_env(tmp_path: Path) -> dict[str, str]:
    """Environment that makes serve run a no-op handler written into tmp_path."""
    return {**importable(tmp_path / "handlers", {"scaling_noop": NOOP_MODULE}),
            "TASK_HANDLER": "scaling_noop:noop",
            "LOG_LEVEL": "WARNING", "FETCH_INTERVAL": "0.5"}


def bulk_insert(db: Any, count: int, status: str = "pending") -> None:
    """Insert `count` tasks with one statement."""
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload, status) "
                    "SELECT 'task ' || n, %s FROM generate_series(1, %s) AS n", (status, count))


def count(db: Any, status: str) -> int:
    return query(db, "SELECT count(*) FROM tasks WHERE status = %s", (status,))[0][0]


def wait_for_count(db: Any, status: str, at_least: int, timeout: float,
                   p: ServeProcess, interval: float = 0.05) -> int:
    """Wait until at least `at_least` tasks are in `status`; return how many are."""
    return wait_until(lambda: (n := count(db, status)) >= at_least and n, timeout,
                      lambda: f"{at_least} tasks {status} (now {count(db, status)})",
                      [p], interval, fail_on_exit=True)


# --- 5. claims sized to the free workers


def test_claims_only_what_the_workers_can_start(db_url: str, db: Any,
                                                serve: ServeFactory) -> None:
    workers, tasks = 2, 20
    # Fetcher.slots(): free = idle + WORKER_COUNT - queued, so the local queue
    # holds at most one round more than the workers run (a prefetch of
    # WORKER_COUNT), however large FETCH_LIMIT is.
    prefetch = workers
    create_runs_table(db)
    bulk_insert(db, tasks)
    # recording: sleeps 0.5 s, then commits a row to `runs`, then returns.
    p = serve(db_url, env=handler_env("recording", TEST_SLEEP="0.5", WORKER_COUNT=str(workers),
                                      FETCH_LIMIT="100", FETCH_INTERVAL="0.5"))

    # Claimed = in_progress rows. Those whose handler already finished (a run
    # recorded) are done work whose outcome is on its way in the completer's
    # next batch; the claim rule does not wait for those writes (batching them
    # is the point), so they are counted apart.
    samples: list[tuple[int, int]] = []  # (claimed and not yet run to the end, in_progress)
    deadline = time.monotonic() + 40  # 20 tasks x 0.5 s / 2 workers = 5 s of work
    while count(db, "done") < tasks:
        assert p.proc.poll() is None, tail(p.output())
        assert time.monotonic() < deadline, f"not done in time\n{tail(p.output())}"
        [(unfinished, in_progress)] = query(
            db, "SELECT count(*) FILTER (WHERE NOT EXISTS ("
                "           SELECT 1 FROM runs WHERE runs.task_id = tasks.id)), count(*) "
                "FROM tasks WHERE status = 'in_progress'")
        samples.append((unfinished, in_progress))
        time.sleep(0.005)
    stop_all([p], signal.SIGINT)

    held = [u for u, _ in samples]
    raw = [n for _, n in samples]
    histogram = sorted({n: held.count(n) for n in set(held)}.items())
    print(f"unfinished claimed tasks (count, samples): {histogram}; "
          f"in_progress rows at most {max(raw)}")
    assert max(held) <= workers + prefetch, (
        f"held up to {max(held)} unfinished tasks with {workers} workers (histogram "
        f"{histogram}; in_progress rows at most {max(raw)})")
    assert max(held) >= workers, histogram  # the workers were kept busy
    # Nothing waited in the local queue long enough to lose its lease: every task
    # ran once, on its first claim.
    rows = query(db, "SELECT status, attempts, rescues, count(*) FROM tasks "
                     "GROUP BY 1, 2, 3")
    assert rows == [("done", 1, 0, tasks)], rows
    fetched = [int(n) for n in re.findall(r"Fetched (\d+) tasks", p.output())]
    assert sum(fetched) == tasks and max(fetched) <= workers + prefetch, fetched


def test_without_fetch_limit_fast_tasks_get_large_claims(db_url: str, db: Any,
                                                         noop_env: dict[str, str],
                                                         serve: ServeFactory) -> None:
    """FETCH_LIMIT unset: claims are sized by the idle workers and the task rate,
    not capped at the original's 10, and never over 1,000."""
    bulk_insert(db, 3000)
    p = serve(db_url, env={**noop_env, "WORKER_COUNT": "300", "LOG_LEVEL": "INFO"})
    wait_for_count(db, "done", 3000, 60, p)
    stop_all([p], signal.SIGINT)
    fetched = [int(n) for n in re.findall(r"Fetched (\d+) tasks", p.output())]
    assert sum(fetched) == 3000, fetched
    assert max(fetched) > 300 and max(fetched) <= 1000, fetched  # workers + prefetch


def test_without_fetch_limit_slow_tasks_are_not_hoarded(db_url: str, db: Any,
                                                        serve: ServeFactory) -> None:
    """FETCH_LIMIT unset and tasks that take 0.3 s: once the rate is known, the
    process queues what its workers finish in 50 ms (one task), not a whole round
    more (which FETCH_LIMIT set gives: test_claims_only_what_the_workers_can_start),
    so other processes' workers get the rest."""
    workers, tasks = 4, 40
    create_runs_table(db)
    bulk_insert(db, tasks)
    p = serve(db_url, env=handler_env("recording", TEST_SLEEP="0.3", WORKER_COUNT=str(workers),
                                      FETCH_INTERVAL="0.5"))
    wait_for_count(db, "in_progress", 1, 30, p)
    settled = time.monotonic() + 1.5  # the first rate is measured after 0.5 s of work
    held: list[int] = []
    while count(db, "done") < tasks:
        assert p.proc.poll() is None, tail(p.output())
        assert time.monotonic() < settled + 30, f"not done in time\n{tail(p.output())}"
        [(unfinished,)] = query(
            db, "SELECT count(*) FROM tasks WHERE status = 'in_progress' AND NOT EXISTS ("
                "SELECT 1 FROM runs WHERE runs.task_id = tasks.id)")
        if time.monotonic() > settled and count(db, "pending") > 0:
            held.append(unfinished)
        time.sleep(0.005)
    stop_all([p], signal.SIGINT)
    assert held, "no sample while tasks were still pending"
    assert max(held) <= workers + 1, sorted(set(held))
    assert max(held) >= workers, sorted(set(held))  # the workers were kept busy


# --- 6. flat with size: the hot statements stay on their indexes


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_statements_use_indexes_in_a_big_table(db_url: str, db: Any) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload, status, result, attempts, updated_at) "
                    "SELECT 'old ' || n, 'done', 'dlo', 1, now() - interval '1 day' "
                    "FROM generate_series(1, 1000000) AS n")
    bulk_insert(db, 100_000)
    query_free(db, "ANALYZE tasks")  # autovacuum may not have run yet: give the planner the truth
    assert count(db, "pending") == 100_000

    ids = list(range(1, 101))
    served = {"queues": None, "names": [""], "limited": [], "capped": [], "rooms": [],
              "rated": [], "spans": [], "rated_room": 0}
    claim = {"limit": 100, "holder": "host:1:abcd", "lease": 30, "inline_bytes": 40000,
             **served, "pair_queues": [], "pair_names": []}
    statements = [  # the fetcher's, completer's and heartbeat's, with realistic parameters
        ("claim", "claim", {**claim, "discover": True}),
        ("claim from known pairs", "claim", {**claim, "discover": False,
                                             "pair_queues": ["default"], "pair_names": [""]}),
        ("claim alone", "claim_alone", {**claim, "limit": 1}),
        ("rescue", "rescue", {"max_rescues": 3, "holder": "host:1:abcd", "held": ids}),
        ("next_due", "next_due", {"rated": []}),
        ("alone_waiting", "alone_waiting", served),
        ("heartbeat", "heartbeat", {"ids": ids, "fences": [1] * 100, "holder": "host:1:abcd",
                                    "lease": 30, "agos": [1.5] * 100}),
        ("payloads", "payloads", {"ids": ids, "fences": [1] * 100, "holder": "host:1:abcd"}),
        ("complete", "complete", {
            "holder": "host:1:abcd", "ids": ids, "fences": [1] * 100,
            "statuses": ["done"] * 100, "results": ["x"] * 100,
            "errors": [None] * 100, "delays": [None] * 100, "given_back": [False] * 100,
            "losses": [0] * 100, "tracebacks": [None] * 100}),
    ]
    with db.cursor() as cur:
        for name, query_name, params in statements:
            statement = cur.mogrify(QUERIES[query_name], params).decode()
            cur.execute("EXPLAIN (FORMAT JSON) " + statement)
            raw = cur.fetchone()[0]
            plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            nodes = list(plan_nodes(plan))
            scans = [(n["Node Type"], n.get("Index Name")) for n in nodes
                     if n.get("Relation Name") == "tasks"]
            assert scans, f"{name}: no scan of tasks in the plan?\n{json.dumps(plan, indent=1)}"
            seq = [s for s in scans if s[0] == "Seq Scan"]
            assert not seq, f"{name} scans tasks sequentially:\n{json.dumps(plan, indent=1)}"
            if name.startswith("claim") and name != "claim alone":  # (either index: in order)
                assert {s[1] for s in scans} & {"tasks_queue_claim_idx",
                                                 "tasks_name_claim_idx"}, scans


# --- 7. bounded memory


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return int(fields["VmRSS"]), int(fields["VmHWM"])


@pytest.mark.slow
def test_memory_does_not_grow_with_tasks_processed(db_url: str, db: Any, serve: ServeFactory,
                                                   noop_env: dict[str, str]) -> None:
    total = 50_000
    bulk_insert(db, total)
    p = serve(db_url, env={**noop_env, "WORKER_COUNT": "1000", "FETCH_LIMIT": "1000"})

    wait_for_count(db, "done", 10_000, 40, p, interval=0.01)
    rss_10k, hwm_10k = rss_kb(p.pid)
    wait_for_count(db, "done", total, 60, p)
    rss_50k, hwm_50k = rss_kb(p.pid)
    stop_all([p], signal.SIGINT)

    grown = (rss_50k - rss_10k) / 1024
    print(f"RSS after 10k tasks {rss_10k / 1024:.1f} MB (peak {hwm_10k / 1024:.1f}), "
          f"after 50k {rss_50k / 1024:.1f} MB (peak {hwm_50k / 1024:.1f})")
    assert grown <= 10, (f"RSS grew {grown:.1f} MB from 10k to 50k tasks processed "
                         f"({rss_10k} kB -> {rss_50k} kB)")
    assert (hwm_50k - hwm_10k) / 1024 <= 10, (hwm_10k, hwm_50k)
    assert query(db, "SELECT status, attempts, count(*) FROM tasks GROUP BY 1, 2") == [
        ("done", 1, total)]


# --- 8. claims and completions batched


def xact_commit(base: Any) -> int:
    return query(base, "SELECT xact_commit FROM pg_stat_database "
                       "WHERE datname = current_database()")[0][0]


def test_claims_and_completions_are_batched(db_url: str, db: Any, serve: ServeFactory,
                                            noop_env: dict[str, str]) -> None:
    total = 5000
    bulk_insert(db, total)
    before = xact_commit(db)
    p = serve(db_url, env={**noop_env, "WORKER_COUNT": "100", "FETCH_LIMIT": "100"})
    wait_for_count(db, "done", total, 60, p, interval=0.2)
    stop_all([p], signal.SIGINT)

    # A backend's counters reach pg_stat_database before it leaves pg_stat_activity.
    wait_until(lambda: not query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                     "current_database() AND application_name LIKE "
                                     "'taskworker%%'")[0][0], 30,
               "serve's connections to end after it exited")
    # Counted from a fresh connection: ours may hold its own counters back for a while.
    with closing(psycopg2.connect(db_url, connect_timeout=10)) as fresh:
        fresh.autocommit = True
        after = xact_commit(fresh)

    transactions = after - before
    print(f"{transactions} transactions committed for {total} tasks")
    assert 0 < transactions < total / 5, (
        f"{transactions} transactions for {total} tasks: claims or completions not batched")
    assert count(db, "done") == total
    out = p.output()
    # LOG_LEVEL=WARNING: not one per-task line.
    assert "Processing task ID" not in out and "processed with status" not in out, tail(out)


SLOW_COMPLETIONS = """
CREATE FUNCTION slow_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.002);
    RETURN NEW;
END $$;
CREATE TRIGGER slow_done BEFORE UPDATE ON tasks
    FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE FUNCTION slow_done();
"""


@pytest.mark.slow
def test_claiming_pauses_while_outcomes_wait_to_be_written(db_url: str, db: Any,
                                                           serve: ServeFactory,
                                                           noop_env: dict[str, str]) -> None:
    """A completer slowed down by the database (here: 2 ms per written row, while
    the no-op handler finishes thousands a second) must not let the fetcher claim
    the whole table: claiming pauses once 1,000 outcomes wait to be written."""
    with db.cursor() as cur:
        cur.execute(SLOW_COMPLETIONS)
    bulk_insert(db, 4000)
    p = serve(db_url, env={**noop_env, "WORKER_COUNT": "10", "FETCH_LIMIT": "100"})
    most = 0
    deadline = time.monotonic() + 60
    while count(db, "done") < 4000:
        assert time.monotonic() < deadline, tail(p.output())
        most = max(most, count(db, "in_progress"))
        time.sleep(0.05)
    p.signal(signal.SIGINT)
    assert p.wait(30) == 0
    # 1,000 unwritten + the batch on the wire is part of those + queued and
    # running (2 x WORKER_COUNT) + one claim past the line (FETCH_LIMIT).
    assert 0 < most <= 1000 + 2 * 10 + 100, most
