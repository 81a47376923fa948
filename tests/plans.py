"""The plan of a claim, as the server runs it: EXPLAIN (ANALYZE) of the very
statement and parameters `taskworker.store.tasks.claim` sends, and what the plan
tree says about the tasks table (which indexes, conditions, rows filtered out,
pages touched, sorts).

`Explaining` stands in for the connection `tasks.claim` is given: it runs the
statement with EXPLAIN put in front of the claim (after the SET LOCAL lines of
ordered_plans, which EXPLAIN cannot take) in the caller's transaction, which the
caller rolls back.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from taskworker.store import sql, tasks
from taskworker.store.prepared import Prepared
from taskworker.store.tasks import Pairs, Served

CLAIM_INDEXES = ("tasks_queue_claim_idx", "tasks_name_claim_idx")
SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan",
         "Tid Scan", "Tid Range Scan")


class Explaining:
    """A `Database` for `tasks.claim` that explains the claim instead of
    returning its rows (it still runs: roll the transaction back)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.plan: dict[str, Any] | None = None
        self.prepared: set[str] = set()  # (statements last as long as the session)

    def query(self, statement: Prepared, params: Any = None,
              **_: Any) -> list[tuple[Any, ...]]:
        """The plan serve runs: the statement prepared, its generic plan, behind
        the planner settings."""
        assert isinstance(statement, Prepared), "the claim is no longer prepared"
        assert statement.prefix.startswith(sql.ordered_plans), \
            "the claim is no longer sent behind ordered_plans"
        first = statement.name not in self.prepared
        self.prepared.add(statement.name)
        with self.conn.cursor() as cur:
            cur.execute(statement.explained("ANALYZE, BUFFERS, SUMMARY, FORMAT JSON", first),
                        params)
            self.plan = cur.fetchone()[0][0]
        return []


def walk(node: dict[str, Any], path: tuple[str, ...] = (),
         ctes: bool = True) -> Iterator[tuple[dict, tuple]]:
    """Every node of a plan tree, with the node types above it; with `ctes`
    false, not the plans of the CTEs (InitPlans) hung under a node, which run
    apart from it: a Sort of a CTE's rows does not sort what the CTE scans."""
    yield node, path
    for child in node.get("Plans", []):
        if ctes or child.get("Parent Relationship") != "InitPlan":
            yield from walk(child, (*path, node["Node Type"]), ctes)


def reads_tasks(node: dict[str, Any]) -> bool:
    """Does `node` read rows of tasks? Not counting the discovery of the (queue,
    name) pairs (a recursive skip through the index, one row per pair): the
    shares sort the few queues it finds."""
    return any(n["Node Type"] in SCANS and n.get("Relation Name") == "tasks"
               and "Recursive Union" not in path for n, path in walk(node, ctes=False))


@dataclass
class ClaimPlan:
    """What one claim's plan did, in the terms the tests assert on."""

    tree: dict[str, Any]
    planning_ms: float
    execution_ms: float
    claimed: int  # rows the UPDATE wrote
    scans: list[dict[str, Any]] = field(default_factory=list)  # scans of tasks
    sorts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def filtered(self) -> int:
        """Rows of tasks read and thrown away by a Filter (not an index condition)."""
        return sum(n.get("Rows Removed by Filter", 0) for n in self.scans)

    @property
    def pages(self) -> int:
        """Pages (index and heap) the scans of tasks touched."""
        return sum(n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0)
                   for n in self.scans)

    def describe(self) -> str:
        lines = [f"planning {self.planning_ms:.2f} ms, execution {self.execution_ms:.2f} ms, "
                 f"{self.claimed} claimed, {self.filtered} filtered, {self.pages} pages"]
        for node, path in walk(self.tree):
            keys = ("Relation Name", "Index Name", "Index Cond", "Filter",
                    "Rows Removed by Filter", "Actual Rows", "Sort Key", "CTE Name")
            detail = ", ".join(f"{k}={node[k]}" for k in keys if k in node)
            lines.append("  " * len(path) + f"{node['Node Type']} {detail}")
        return "\n".join(lines)


def explain_claim(conn: Any, *, limit: int, served: Served,
                  pairs: Pairs | None = None) -> ClaimPlan:
    """The plan of `tasks.claim(limit, served, pairs)` on `conn` (not autocommit:
    the claim runs; the caller rolls back)."""
    db = Explaining(conn)
    tasks.claim(db, holder="explain", limit=limit, lease=30, served=served, pairs=pairs)
    assert db.plan is not None
    tree = db.plan["Plan"]
    nodes = [n for n, _ in walk(tree)]
    updates = [n for n in nodes if n["Node Type"] == "ModifyTable"
               and n.get("Relation Name") == "tasks"]
    return ClaimPlan(
        tree, db.plan["Planning Time"], db.plan["Execution Time"],
        claimed=sum(n["Actual Rows"] for n in updates),
        scans=[n for n in nodes if n["Node Type"] in SCANS and n.get("Relation Name") == "tasks"
               and n.get("Index Name") != "tasks_pkey"],
        sorts=[n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")])


def never_analyzed(conn: Any) -> bool:
    """Has the tasks table never been analyzed or vacuumed (no statistics)?"""
    with conn.cursor() as cur:
        cur.execute("SELECT c.reltuples < 0 AND s.last_analyze IS NULL "
                    "AND s.last_autoanalyze IS NULL AND NOT EXISTS "
                    "(SELECT 1 FROM pg_stats WHERE tablename = 'tasks') "
                    "FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid "
                    "WHERE c.oid = 'tasks'::regclass")
        return bool(cur.fetchone()[0])
