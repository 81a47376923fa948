"""The statements that write outcomes: `complete` (the completer's), the
arrays every outcome-writing statement takes (claim_shares_completing takes them
too), and the rows' state after a write whose reply was lost.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from . import arrays, sql
from .database import Database


class OutcomeWrite(NamedTuple):
    """One row of `complete`: what to write for one hold of a task."""

    id: int
    fence: int  # the hold's fencing token: written only while the row still has it
    status: str  # done, error or pending
    result: str | None
    error: str | None
    delay: float | None  # pending: seconds until due again (None: now)
    given_back: bool  # pending, untouched: the attempt is not counted


class RowState(NamedTuple):
    status: str
    fence: int
    rescues: int
    locked_by: str | None


def complete(db: Database, *, holder: str, writes: Sequence[OutcomeWrite],
             frees_slots: bool = True) -> set[tuple[int, int]]:
    """Write many outcomes in one statement; return the (id, fence) pairs written
    (the others were fenced off: `holder` no longer has that hold). With
    `frees_slots`, also free the concurrency slots of the tasks written (a holder
    that runs no limited task has none). A statement_timeout is raised
    (QueryCanceled), not sent again: the caller splits the batch."""
    statement = sql.complete_freeing_slots if frees_slots else sql.complete
    rows = db.query(statement, {"holder": holder, **outcome_arrays(writes)},
                    resend_on_timeout=False)
    return {(task_id, fence) for task_id, fence in rows}


def outcome_arrays(writes: Sequence[OutcomeWrite]) -> dict[str, str]:
    """The parameters of `complete`: one array per column, one element per
    outcome, as array literals (see arrays.py)."""
    return {"ids": arrays.numbers(w.id for w in writes),
            "fences": arrays.numbers(w.fence for w in writes),
            "statuses": arrays.texts(w.status for w in writes),
            "results": arrays.texts(w.result for w in writes),
            "errors": arrays.texts(w.error for w in writes),
            "delays": arrays.numbers(w.delay for w in writes),
            "given_back": arrays.booleans(w.given_back for w in writes)}


def outcome_rows(db: Database, ids: Sequence[int]) -> dict[int, RowState]:
    """What the rows `ids` say now (a missing id: the row was deleted)."""
    rows = db.query(sql.outcome_rows, {"ids": arrays.numbers(ids)})
    return {row[0]: RowState(*row[1:]) for row in rows}
