"""The claim reads only what it takes, whatever the backlog and however stale the
statistics: EXPLAIN (ANALYZE) of the claim exactly as `tasks.claim` sends it, on
a table bulk-loaded and never analyzed (autovacuum off for it), for claims of 1,
30 and 100, with the (queue, name) pairs discovered in the claim and with the
pairs an earlier claim returned.

Each shape asserts on the plan tree: no sequential or bitmap scan of tasks and no
sort over a scan of it (only the small sorts over the rows already picked); every
scan of tasks goes through tasks_queue_claim_idx or tasks_name_claim_idx with the
queue (and the name) as index conditions; the rows those scans read and throw
away, and the pages they touch, stay small; the claim takes what it should.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from plans import CLAIM_INDEXES, ClaimPlan, explain_claim, never_analyzed, reads_tasks

from taskworker.store import tasks
from taskworker.store.database import Direct
from taskworker.store.tasks import Served

pytestmark = pytest.mark.timeout(120)

LIMITS = (1, 30, 100)
MOST_FILTERED = 100  # rows of tasks a claim may read and throw away
MOST_PAGES = 300  # pages of tasks (index and heap) a claim of at most 100 may touch (seen: <= 150)

SPREAD = """INSERT INTO tasks (payload, queue, priority)
            SELECT 'spread ' || n, 'q' || (n %% 10), (n / 10) %% 5
            FROM generate_series(1, %(n)s) AS n"""
# A rolling deploy's shape: a big backlog, at a higher priority, of a queue or a
# task name this process does not serve, beside a little of its own work.
OTHER_QUEUE = """INSERT INTO tasks (payload, queue, priority)
                 SELECT 'new queue ' || n, 'added', 10 FROM generate_series(1, %(n)s) AS n"""
OTHER_NAME = """INSERT INTO tasks (payload, queue, task, priority)
                SELECT 'new name ' || n, 'default', 'added', 10
                FROM generate_series(1, %(n)s) AS n"""
KNOWN = """INSERT INTO tasks (payload, queue, task)
           SELECT 'known ' || n, 'default', %(task)s FROM generate_series(1, %(n)s) AS n"""
FINISHED = """INSERT INTO tasks (payload, status, attempts, queue, priority)
              SELECT NULL, 'done', 1, 'q' || (n %% 3), n %% 5
              FROM generate_series(1, %(n)s) AS n"""


@pytest.fixture
def stale(db: psycopg2.extensions.connection) -> Iterator[psycopg2.extensions.connection]:
    """`db` with autovacuum off for tasks: whatever a test bulk-loads is never
    analyzed, as on a server that has not got round to it yet."""
    with db.cursor() as cur:
        cur.execute("ALTER TABLE tasks SET (autovacuum_enabled = false)")
    yield db


def load(db: Any, *statements: tuple[str, dict[str, Any]]) -> None:
    with db.cursor() as cur:
        for statement, params in statements:
            cur.execute(statement, params)
    assert never_analyzed(db), "the table has statistics: the test would prove nothing"


def explained(url: str, served: Served, limit: int, pairs: tasks.Pairs | None) -> ClaimPlan:
    """The plan of one claim, on a connection of its own, rolled back."""
    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        return explain_claim(conn, limit=limit, served=served, pairs=pairs)
    finally:
        conn.rollback()
        conn.close()


def discovered(url: str, served: Served) -> tasks.Pairs:
    """The (queue, name) pairs a claim finds (the claim itself rolled back)."""
    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        found = tasks.claim(Direct(conn), holder="look", limit=1, lease=30, served=served).pairs
    finally:
        conn.rollback()
        conn.close()
    assert found is not None
    return found


def assert_claims_by_index(plan: ClaimPlan, *, limit: int, expect: int) -> None:
    """The plan reads tasks only through the claim indexes, by queue (and name)."""
    why = plan.describe()
    assert plan.claimed == expect, why
    assert plan.scans, why
    for scan in plan.scans:
        assert scan["Node Type"] == "Index Scan", why
        assert scan["Index Name"] in CLAIM_INDEXES, why
        cond = scan.get("Index Cond", "")
        if not cond or "ROW(queue" in cond:  # the discovery: the first (queue, name) pair,
            assert scan["Index Name"] == "tasks_name_claim_idx", why  # then a skip to the next
            assert scan["Actual Rows"] <= 1, why
            continue
        assert "(queue = " in cond, why
        if scan["Index Name"] == "tasks_name_claim_idx":
            assert "(COALESCE(task, ''::text) = " in cond, why
    for sort in plan.sorts:  # over the rows picked already, never over a scan of tasks
        assert not reads_tasks(sort), why
        assert sort["Actual Rows"] <= 10 * limit, why
    assert plan.filtered < MOST_FILTERED, why
    assert plan.pages < MOST_PAGES, why


def assert_each_claim(url: str, served: Served, expect: dict[int, int]) -> None:
    """Claims of 1, 30 and 100, discovering the pairs and with the pairs found."""
    pairs = discovered(url, served)
    for limit in LIMITS:
        for given in (None, pairs):
            plan = explained(url, served, limit, given)
            assert_claims_by_index(plan, limit=limit, expect=expect[limit])


def test_spread_backlog_never_analyzed(stale: Any, db_url: str) -> None:
    """100,000 pending rows over 10 queues and 5 priorities."""
    load(stale, (SPREAD, {"n": 100_000}))
    assert_each_claim(db_url, Served(None, [""], {}, []), {1: 1, 30: 30, 100: 100})


def test_backlog_of_a_queue_not_served(stale: Any, db_url: str) -> None:
    """100,000 rows at priority 10 in a queue this process does not serve, 300 in its own."""
    load(stale, (OTHER_QUEUE, {"n": 100_000}), (KNOWN, {"n": 300, "task": None}))
    served = Served(["default"], [""], {}, [])
    assert sorted(discovered(db_url, served)) == [("added", ""), ("default", "")]
    assert_each_claim(db_url, served, {1: 1, 30: 30, 100: 100})


def test_backlog_of_a_name_not_known(stale: Any, db_url: str) -> None:
    """100,000 rows at priority 10 of a task name this process does not know, in the
    queue of the 300 it knows."""
    load(stale, (OTHER_NAME, {"n": 100_000}), (KNOWN, {"n": 300, "task": "known"}))
    served = Served(None, ["known"], {}, [])
    assert sorted(discovered(db_url, served)) == [("default", "added"), ("default", "known")]
    assert_each_claim(db_url, served, {1: 1, 30: 30, 100: 100})


def test_a_million_finished_rows(stale: Any, db_url: str) -> None:
    """1,000,000 done rows beside 300 pending ones."""
    load(stale, (FINISHED, {"n": 1_000_000}), (KNOWN, {"n": 300, "task": None}))
    assert_each_claim(db_url, Served(None, [""], {}, []), {1: 1, 30: 30, 100: 100})


def test_one_queue_backlog_never_analyzed(stale: Any, db_url: str) -> None:
    """100,000 pending rows in the default queue, at 5 priorities."""
    load(stale, (SPREAD.replace("'q' || (n %% 10)", "'default'"), {"n": 100_000}))
    assert_each_claim(db_url, Served(None, [""], {}, []), {1: 1, 30: 30, 100: 100})


DELAYED = """INSERT INTO tasks (payload, priority, run_at)
             SELECT 'later ' || n, 10, now() + interval '1 hour'
             FROM generate_series(1, %(n)s) AS n"""


@pytest.mark.xfail(strict=True, reason="known gap: run_at <= now() is an index condition "
                   "after priority, so a claim walks every not-yet-due entry of a higher "
                   "priority (about 600 pages, 10 ms, for a claim of 1 here) without "
                   "filtering a row")
def test_backlog_not_yet_due_at_a_higher_priority(stale: Any, db_url: str) -> None:
    """100,000 rows due in an hour at priority 10 (retries, delays) in the served queue."""
    load(stale, (DELAYED, {"n": 100_000}), (KNOWN, {"n": 300, "task": None}))
    assert_each_claim(db_url, Served(None, [""], {}, []), {1: 1, 30: 30, 100: 100})
