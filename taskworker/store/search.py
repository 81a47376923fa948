"""The dashboard's text search index, kept off the hot path: the search indexer's
pass and how far behind it is.

A trigram index on tasks would make every completion insert the row's trigrams
inside the completer's UPDATE. Instead the dashboard's indexer copies the words
of finished tasks (their text is final until a retry finishes them again, with a
new updated_at) into taskworker_search, in keyset order (updated_at, id) through
tasks_finished_at_idx, a batch per pass; searches read that table's trigram
index for the tasks the indexer has reached and the few finished since directly.

Why no finished task is skipped. updated_at is now() of the transaction that
finished the task, i.e. that transaction's START, and a transaction that started
earlier may commit later: a position (updated_at, id) passed once is never
looked at again, so a row committed later with a smaller updated_at would be
missed. Hence the watermark W = least(now(), the xact_start of the oldest other
transaction running in this database) (less a small margin for the instant
between a transaction taking its start time and pg_stat_activity showing it).
Every transaction that could still write a row with updated_at < W was running,
and visible in pg_stat_activity, when pass k read it; so every row with
updated_at < W had committed before pass k ended. Pass k stores W; pass k+1
(a later snapshot) goes only up to the W stored by a pass before it, and sees
all of those rows. pg_stat_activity shows xact_start only for sessions of the
same role (or to a member of pg_read_all_stats): the dashboard must connect as
the role serve uses, or a late commit of another role's session can be missed
until that task is finished again.
"""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from . import sql
from .database import Database

BATCH = 5000  # finished tasks copied per pass (and stale side rows forgotten)
MARGIN = 1.0  # seconds the watermark keeps below the oldest transaction's start
HIGHEST = 2**63 - 1


class Pass(NamedTuple):
    copied: int  # finished tasks whose words were copied (BATCH: more are waiting)
    forgotten: int  # side rows of tasks the pruner removed
    indexed_at: datetime | None  # the position reached (None: none yet, or another
    # indexer had the progress row)
    indexed_id: int | None


def index_pass(db: Database, batch: int = BATCH) -> Pass:
    """One pass of the indexer: one statement, one round trip."""
    rows = db.query(sql.search_index_pass, {"batch": batch, "margin": MARGIN,
                                            "highest": HIGHEST})
    return Pass(*rows[0]) if rows else Pass(0, 0, None, None)


class Lag(NamedTuple):
    indexed_at: datetime | None  # finished tasks up to here are indexed (None: none yet)
    indexed_id: int
    waiting: int  # finished tasks past that position (counted up to ENOUGH)
    oldest_waiting: datetime | None  # the updated_at of the oldest of them
    now: datetime  # the database's clock

    @property
    def behind(self) -> bool:
        """Far enough behind for a search to say so: more than BEHIND_TASKS tasks
        waiting, or one that finished more than BEHIND_SECONDS ago."""
        return self.waiting > BEHIND_TASKS or (
            self.oldest_waiting is not None
            and (self.now - self.oldest_waiting).total_seconds() > BEHIND_SECONDS)


BEHIND_TASKS = 10_000
BEHIND_SECONDS = 60.0
ENOUGH = BEHIND_TASKS + 1  # past this many tasks waiting, the count stops


def lag(db: Database) -> Lag:
    """How far the indexer is behind (reads at most ENOUGH index entries)."""
    return Lag(*db.query(sql.dash_search_lag, {"enough": ENOUGH})[0])
