"""The statements that write outcomes: `complete`, and the arrays every
outcome-writing statement takes (claim_shares_completing takes them too).

Each of them answers for every outcome it was given whether that outcome is in
the table (written now, or found written by its own hold: see outcome_states in
queries.sql), so a statement sent again after its reply was lost with the
connection learns from its own answer what the first send wrote.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from . import arrays, sql
from .database import Database
from .prepared import Prepared

Hold = tuple[int, int]  # (task id, fence): one hold of one task
# The holds whose outcome is in the table: "now" (written by the statement that
# says so), or "before" (by an earlier send of it, whose reply was lost).
Written = dict[Hold, str]
# The arrays of the outcomes, as PREPARE takes them (the statements that
# include outcomes_given take them too).
OUTCOME_TYPES = {
    "ids": "bigint[]", "fences": "bigint[]", "statuses": "text[]", "results": "text[]",
    "errors": "text[]", "delays": "float8[]", "given_back": "bool[]", "losses": "int[]",
    "tracebacks": "text[]"}
COMPLETE_TYPES = {"holder": "text", **OUTCOME_TYPES}
# Behind the claim's planner settings: with sequential scans priced out, a
# batch's rows are found by their ids (see outcomes_written), not by reading the
# whole table for a hash join, which statistics of a smaller table can make
# look cheaper. Prepared, and planned once (a generic plan: that same probe per
# outcome): planning it for each batch's values cost the server half as much
# again as writing a batch of 20 (benchmarks/claimcost.py, "apart custom plan").
# Behind a pooler, and in a task's bound transaction, it is sent whole.
COMPLETE = Prepared("taskworker_complete_v1", sql.complete, COMPLETE_TYPES, sql.ORDERED)
COMPLETE_FREEING_SLOTS = Prepared("taskworker_complete_freeing_slots_v1",
                                  sql.complete_freeing_slots, COMPLETE_TYPES, sql.ORDERED)


class OutcomeWrite(NamedTuple):
    """One row of `complete`: what to write for one hold of a task."""

    id: int
    fence: int  # the hold's fencing token: written only while the row still has it
    status: str  # done, error or pending
    result: str | None  # text (format 1), or the return value as JSON (format 2)
    error: str | None
    delay: float | None  # pending: seconds until due again (None: now)
    given_back: bool  # pending, untouched: the attempt is not counted
    losses: int = 0  # workers lost with the task before this hold (any loss since fences it off)
    traceback: str | None = None  # of the failure `error` describes


def complete(db: Database, *, holder: str, writes: Sequence[OutcomeWrite],
             frees_slots: bool = True) -> Written:
    """Write many outcomes in one statement; return the holds whose outcome is in
    the table (the others were fenced off: `holder` no longer has that hold).
    With `frees_slots`, also free the concurrency slots of the tasks written (a
    holder that runs no limited task has none). A statement_timeout is raised
    (QueryCanceled), not sent again: the caller splits the batch."""
    statement = COMPLETE_FREEING_SLOTS if frees_slots else COMPLETE
    rows = db.query(statement, {"holder": holder, **outcome_arrays(writes)},
                    resend_on_timeout=False)
    return {(task_id, fence): written for task_id, fence, written in rows
            if written != "fenced"}


def outcome_arrays(writes: Sequence[OutcomeWrite]) -> dict[str, str]:
    """The parameters of `complete`: one array per column, one element per
    outcome, as array literals (see arrays.py)."""
    return {"ids": arrays.numbers(w.id for w in writes),
            "fences": arrays.numbers(w.fence for w in writes),
            "statuses": arrays.texts(w.status for w in writes),
            "results": arrays.texts(w.result for w in writes),
            "errors": arrays.texts(w.error for w in writes),
            "delays": arrays.numbers(w.delay for w in writes),
            "given_back": arrays.booleans(w.given_back for w in writes),
            "losses": arrays.numbers(w.losses for w in writes),
            "tracebacks": arrays.texts(w.traceback for w in writes)}
