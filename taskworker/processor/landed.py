"""Which outcomes a statement wrote: the ones its reply names, and, when the
connection was lost and the statement sent again, the ones the rows show were
written by the first send (its reply lost with the connection). For the
completer's statements and the claims that carry outcomes alike.
"""
from __future__ import annotations

from ..logs import log
from ..store import completion
from ..store import tasks as store
from ..store.connection import ReconnectingConnection
from .outcomes import Outcome


def confirm(db: ReconnectingConnection, batch: list[Outcome], written: set[tuple[int, int]],
            lost: bool) -> set[tuple[int, int]]:
    """The outcomes of `batch` written, after a statement that wrote `written`
    (and then, when one of them landed that makes tasks claimable, a wake-up of
    every process's fetcher). `lost`: the connection was lost and the statement
    sent again: the first send may have committed with its reply lost, and the
    second found nothing left to write; the rows are asked before those
    outcomes are called discarded."""
    if lost:
        written = written | _committed_before_the_loss(db, batch, written)
    if any(o.wakes_others for o in batch if o.task.hold in written):
        store.wake_others(db)
    return written


def _committed_before_the_loss(db: ReconnectingConnection, batch: list[Outcome],
                               written: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The outcomes of `batch` not in `written` that the rows show as written by
    this very hold: the status it writes, no holder, the hold's fence (any later
    claim raises it) and no rescue since the claim (a rescue counts one)."""
    missing = [o for o in batch if o.task.hold not in written]
    if not missing:
        return set()
    rows = completion.outcome_rows(db, [o.task.id for o in missing])
    found = set()
    for o in missing:
        row, expected = rows.get(o.task.id), o.write()
        if row is not None and row.locked_by is None and row.status == expected.status \
                and row.fence == o.task.fence and row.rescues == o.task.rescues:
            log.info("Task ID: %d outcome was written before the connection was lost",
                     o.task.id, extra=fields(o))
            found.add(o.task.hold)
    return found


def fields(o: Outcome) -> dict[str, object]:
    """An outcome's fields for the log (LOG_FORMAT=json)."""
    return {"task_id": o.task.id, "worker": o.worker or None, "attempt": o.task.attempt}
