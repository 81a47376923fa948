"""What one claim takes: priority, then due time, then id within a queue; queues
taking turns; paused queues left alone; a capped queue held to its room; and
the (queue, name) pairs a discovering claim reports. Through `tasks.claim`, on
the real table.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from invariants import query

from taskworker.store import tasks
from taskworker.store.database import Direct
from taskworker.store.tasks import Served

pytestmark = pytest.mark.timeout(60)

ALL = Served(None, [""], {}, [])


def add(db: Any, queue: str, count: int, priority: int = 0, task: str | None = None,
        status: str = "pending", due: str = "-1 minute") -> list[int]:
    """`count` tasks of one kind, due `due` from now; their ids."""
    rows = query(db, "INSERT INTO tasks (payload, queue, priority, task, status, run_at) "
                     "SELECT %s || ' ' || n, %s, %s, %s, %s, now() + %s::interval "
                     "FROM generate_series(1, %s) AS n RETURNING id",
                 (queue, queue, priority, task, status, due, count))
    return sorted(r[0] for r in rows)


def claim(db: Any, limit: int, served: Served = ALL,
          pairs: tasks.Pairs | None = None) -> tasks.Claim:
    return tasks.claim(Direct(db), holder="me", limit=limit, lease=30, served=served,
                       pairs=pairs)


def test_within_a_queue_priority_first_then_due_time_then_id(db: Any) -> None:
    low_old = add(db, "default", 1, priority=0, due="-3 minutes")
    high_new = add(db, "default", 1, priority=5, due="-1 minute")
    high_old = add(db, "default", 2, priority=5, due="-2 minutes")  # same run_at: by id
    mid_oldest = add(db, "default", 1, priority=1, due="-10 minutes")
    add(db, "default", 1, priority=9, due="1 hour")  # not due yet
    order = [row.task.id for _ in range(6) for row in claim(db, 1).rows]
    assert order == high_old + high_new + mid_oldest + low_old


def test_queues_take_turns_whatever_their_priorities(db: Any) -> None:
    add(db, "a", 10, priority=9)
    add(db, "b", 10, priority=0)
    rows = claim(db, 4).rows
    assert Counter(row.task.queue for row in rows) == {"a": 2, "b": 2}
    assert {row.share for row in rows} == {2}


def test_a_paused_queue_is_not_claimed(db: Any) -> None:
    add(db, "a", 5)
    b = add(db, "b", 5)
    query(db, "INSERT INTO taskworker_paused_queues (queue) VALUES ('a')")
    assert sorted(row.task.id for row in claim(db, 10).rows) == b
    assert claim(db, 10).rows == []
    query(db, "DELETE FROM taskworker_paused_queues WHERE queue = 'a'")
    assert {row.task.queue for row in claim(db, 10).rows} == {"a"}


def test_a_capped_queue_gets_at_most_its_room(db: Any) -> None:
    add(db, "a", 10)
    add(db, "b", 10)
    rows = claim(db, 10, Served(None, [""], {"a": 1}, [])).rows
    assert Counter(row.task.queue for row in rows) == {"a": 1, "b": 5}
    rows = claim(db, 10, Served(None, [""], {"a": 0}, [])).rows
    assert Counter(row.task.queue for row in rows) == {"b": 5}


def test_a_discovering_claim_reports_the_pairs_with_pending_tasks(db: Any) -> None:
    add(db, "a", 2)
    add(db, "a", 2, task="x")
    add(db, "b", 1, task="y", due="1 hour")  # pending, not yet due: a pair all the same
    add(db, "c", 3, task="z", status="done")
    add(db, "d", 1, task="w", status="in_progress")
    result = claim(db, 10, Served(None, ["x"], {}, []))
    assert sorted(result.pairs or []) == [("a", ""), ("a", "x"), ("b", "y")]
    assert [(row.task.queue, row.task.name) for row in result.rows] == [("a", "x")] * 2
    again = claim(db, 10, Served(None, [""], {}, []), pairs=result.pairs)
    assert again.pairs is None  # given, not looked for
    assert [(row.task.queue, row.task.name) for row in again.rows] == [("a", None)] * 2
    assert claim(db, 10, Served(None, ["y"], {}, [])).pairs == [("b", "y")]  # a: all claimed
