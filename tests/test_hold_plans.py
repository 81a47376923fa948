"""The statements that find a process's holds by (id, fence) read one row of
tasks per hold, however many rows are in progress and whatever the statistics
say: EXPLAIN (ANALYZE) of `complete`, `heartbeat` and `payloads` exactly as
serve sends them (behind their planner settings; the outcome writes prepared,
with the generic plan), on a table never analyzed and on one analyzed while
nothing was in progress.

Under a steady feed (a table truncated, or analyzed before the feed began) the
planner priced tasks_in_progress_idx at one row and made it the outer side of a
nested loop that compared every outcome with every row in progress: the write of
550 outcomes beside 1,100 rows in progress took 0.1 to 1.3 s, and one serve fed
10,000 tasks/s fell behind at 4,000/s.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from plans import Explaining as ExplainingPrepared
from plans import walk

from taskworker.store import completion, tasks
from taskworker.store.completion import OutcomeWrite

pytestmark = pytest.mark.timeout(120)

HOLDER = "host:1:feedbeef"
IN_PROGRESS = 2000  # rows this holder has in progress
HOLDS = 100  # of those, the ones a statement names
_SETTINGS = re.compile(r"\A(?:\s*SET LOCAL [^;]*;)*\s*")


class Explaining:
    """A `Database` that runs the planner settings a statement is sent behind,
    then EXPLAIN (ANALYZE) of the statement, in the caller's transaction (rolled
    back after), and keeps the plan."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.plan: dict[str, Any] | None = None

    def query(self, statement: str, params: Any = None, **_: Any) -> list[tuple[Any, ...]]:
        settings = _SETTINGS.match(statement)
        assert settings is not None  # (it matches nothing at least)
        with self.conn.cursor() as cur:
            if settings.group(0):
                cur.execute(settings.group(0))
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement[settings.end():], params)
            raw = cur.fetchone()[0]
        self.plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
        return []


def rows_read(plan: dict[str, Any]) -> tuple[int, int]:
    """(rows of tasks the scans returned or filtered out, over all their loops;
    rows any join threw away)."""
    read = dropped = 0
    for node, _ in walk(plan):
        loops = node.get("Actual Loops", 0)
        if node.get("Relation Name") == "tasks" and "Scan" in node["Node Type"]:
            read += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
        dropped += node.get("Rows Removed by Join Filter", 0) * loops
    return read, dropped


@pytest.fixture(params=["never analyzed", "analyzed before the claims"])
def holds(request: Any, db: psycopg2.extensions.connection,
          db_url: str) -> Iterator[tuple[psycopg2.extensions.connection, list[tuple[int, int]]]]:
    """IN_PROGRESS rows held by HOLDER beside pending and finished ones, and a
    connection in a transaction; yields it with HOLDS of the holds."""
    with db.cursor() as cur:
        cur.execute("ALTER TABLE tasks SET (autovacuum_enabled = false)")
        cur.execute("INSERT INTO tasks (payload, status, attempts) "
                    "SELECT 'old', 'done', 1 FROM generate_series(1, 20000)")
        cur.execute("INSERT INTO tasks (payload) SELECT 'p' FROM generate_series(1, 20000)")
        if request.param != "never analyzed":
            cur.execute("ANALYZE tasks")  # (nothing in progress yet)
        cur.execute("UPDATE tasks SET status = 'in_progress', locked_by = %s, attempts = 1, "
                    "locked_until = now() + interval '1 minute', fence = fence + 1 "
                    "WHERE id IN (SELECT id FROM tasks WHERE status = 'pending' "
                    "             ORDER BY id LIMIT %s) RETURNING id, fence",
                    (HOLDER, IN_PROGRESS))
        held = sorted(cur.fetchall())
    conn = psycopg2.connect(db_url)
    try:
        yield conn, held[::IN_PROGRESS // HOLDS]
    finally:
        conn.rollback()
        conn.close()


def test_outcomes_are_written_by_one_probe_per_hold(holds: Any) -> None:
    conn, held = holds
    db = ExplainingPrepared(conn)
    completion.complete(db, holder=HOLDER, frees_slots=False,  # type: ignore[arg-type]
                        writes=[OutcomeWrite(i, f, "done", None, None, None, False)
                                for i, f in held])
    assert db.plan is not None
    read, dropped = rows_read(db.plan["Plan"])
    assert read <= 2 * len(held) and dropped <= len(held), (
        f"read {read} rows of tasks and a join dropped {dropped} to write {len(held)} "
        f"outcomes:\n{json.dumps(db.plan, indent=1)[:6000]}")


@pytest.mark.parametrize("outcomes", [10, HOLDS])
def test_a_busy_claim_writes_its_outcomes_by_one_probe_per_hold(holds: Any,
                                                                 outcomes: int) -> None:
    conn, held = holds
    db = ExplainingPrepared(conn)
    share = 10
    tasks.claim_shares_completing(db, holder=HOLDER, lease=30,  # type: ignore[arg-type]
                                  names=[""], shared={"default": share}, inline_bytes=1000,
                                  writes=[OutcomeWrite(i, f, "done", None, None, None, False)
                                          for i, f in held[:outcomes]])
    assert db.plan is not None
    read, dropped = rows_read(db.plan["Plan"])
    assert read <= 2 * outcomes + 3 * share and dropped <= outcomes, (
        f"read {read} rows of tasks and a join dropped {dropped} to write {outcomes} "
        f"outcomes and claim {share}:\n{json.dumps(db.plan, indent=1)[:6000]}")


def test_leases_are_renewed_by_one_probe_per_hold(holds: Any) -> None:
    conn, held = holds
    db = Explaining(conn)
    tasks.heartbeat(db, holder=HOLDER, holds=held, lease=30)  # type: ignore[arg-type]
    assert db.plan is not None
    read, dropped = rows_read(db.plan)
    assert read <= 3 * len(held) and dropped <= len(held), (  # (mine, locked, extended)
        f"read {read} rows of tasks and a join dropped {dropped} to renew {len(held)} "
        f"leases:\n{json.dumps(db.plan, indent=1)[:6000]}")


def test_payloads_are_loaded_by_one_probe_per_hold(holds: Any) -> None:
    conn, held = holds
    db = Explaining(conn)
    tasks.payloads(db, holder=HOLDER, holds=held)  # type: ignore[arg-type]
    assert db.plan is not None
    read, dropped = rows_read(db.plan)
    assert read <= len(held) and dropped <= len(held), (
        f"read {read} rows of tasks and a join dropped {dropped} to load {len(held)} "
        f"payloads:\n{json.dumps(db.plan, indent=1)[:6000]}")
