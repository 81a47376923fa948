"""A busy claim starts each queue's scan where the last one began (its bound),
so a transaction that holds vacuum back does not make every claim read the
entries of every task claimed since; and nothing before a bound is lost: a task
of a higher priority is still taken first, and one that falls before the bound
at its own priority (given back, enqueued with an earlier due time) is taken by
the whole claim, which reads every queue from its start.

Real PostgreSQL, the statements as serve sends them (tasks.claim_shares,
tasks.claim); the held transaction is a REPEATABLE READ snapshot on a
connection of the test's own.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from invariants import query
from plans import CLAIM_INDEXES, Explaining, walk

from taskworker.store import tasks
from taskworker.store.database import Direct

pytestmark = pytest.mark.timeout(120)

HOLDER = "host:1:b0undb0u"
NAMES = [""]


def claim(db: Any, share: int, bounds: dict[str, tasks.Bound] | None) -> tasks.Claim:
    return tasks.claim_shares(Direct(db), holder=HOLDER, lease=60, names=NAMES,
                              shared={"default": share}, bounds=bounds)


def add(db: Any, count: int, priority: int = 0, age: str = "0s") -> list[int]:
    return [row[0] for row in query(
        db, "INSERT INTO tasks (payload, priority, run_at) "
            "SELECT 'p', %s, now() - %s::interval FROM generate_series(1, %s) RETURNING id",
        (priority, age, count))]


@pytest.fixture
def held(db_url: str) -> Iterator[Any]:
    """A transaction with a snapshot and an xid, held open while the test runs:
    vacuum can remove no row version it may see."""
    conn = psycopg2.connect(db_url)
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT txid_current()")
    yield conn
    conn.rollback()
    conn.close()


def test_a_bounded_claim_takes_higher_priorities_first_and_leaves_the_rest_to_the_whole_claim(
        db: Any) -> None:
    first = add(db, 30)
    got = claim(db, 10, None)
    assert [r.task.id for r in got.rows] == first[:10]
    bounds = got.bounds
    assert bounds["default"][0] == 0 and bounds["default"][2] == first[0], bounds

    urgent = add(db, 2, priority=5)  # a higher priority: before the bound in the index
    late = add(db, 1, age="1 hour")  # due earlier, at the same priority: before the bound
    got = claim(db, 10, bounds)
    assert [r.task.id for r in got.rows] == urgent + first[10:18], \
        "a bounded claim must take a higher priority first, then go on from its bound"
    assert late[0] not in {r.task.id for r in got.rows}

    whole = tasks.claim(Direct(db), holder=HOLDER, limit=5, lease=60,
                        served=tasks.Served(None, NAMES, {}, []))
    assert [r.task.id for r in whole.rows] == late + first[18:22], \
        "the whole claim reads the queue from its start: what fell before the bound is taken"
    assert query(db, "SELECT count(*) FROM tasks WHERE status = 'pending'") == [(8,)]


def test_a_long_transaction_does_not_make_a_bounded_claim_read_what_was_claimed(
        db: Any, held: Any, db_url: str) -> None:
    ids = add(db, 21000)
    bounds: dict[str, tasks.Bound] = {}
    for _ in range(40):  # 20,000 claimed while the transaction holds their old versions
        got = claim(db, 500, bounds)
        bounds.update(got.bounds)
    assert query(db, "SELECT count(*) FROM tasks WHERE status = 'pending'") == [(1000,)]

    def pages(given: dict[str, tasks.Bound] | None) -> tuple[int, list[int]]:
        """(pages the claim's scans of the queue touched, index and heap; the ids
        claimed), rolled back."""
        conn = psycopg2.connect(db_url)
        try:
            explaining = Explaining(conn)
            tasks.claim_shares(explaining, holder=HOLDER, lease=60,  # type: ignore[arg-type]
                               names=NAMES, shared={"default": 100}, bounds=given)
            assert explaining.plan is not None
            touched = sum(n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0)
                          for n, _ in walk(explaining.plan["Plan"])
                          if n.get("Index Name") in CLAIM_INDEXES)
            rows = query(conn, "SELECT id FROM tasks WHERE locked_by = %s "
                               "AND status = 'in_progress' AND id > %s ORDER BY id",
                         (HOLDER, ids[19999]))
            return touched, [r[0] for r in rows]
        finally:
            conn.rollback()
            conn.close()

    bounded, took = pages(bounds)
    unbounded, took_too = pages(None)
    assert took == took_too == ids[20000:20100], "both claims take the next 100 tasks"
    # (seen: 9 pages against 111 with 5,000 claimed before)
    assert unbounded > 300, f"the held transaction kept few entries to walk ({unbounded} pages)"
    assert bounded * 10 < unbounded, (
        f"a bounded claim touched {bounded} pages of tasks, the whole queue's scan {unbounded}")
