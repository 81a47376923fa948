"""Deleting finished tasks: the loop shared by `taskworker prune` and by `serve`
with PRUNE_AFTER set.

Deletes go in batches of PRUNE_BATCH rows, lowest ids first, each its own short
transaction, so neither workers nor producers wait on a long lock. One batch
runs at a time across every process and host (queries.sql, prune), and serve's
pruner rests after each batch as long as the batch took: a table that kept
months of history (10,000,000 rows in part 19's soak) is pruned by at most half
of one server process's time, not by every serve's pruner at once, each taking
a whole core from the claims.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import gevent

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection
from ..store.database import Database
from ..store.tasks import FINISHED

PRUNE_BATCH = 10000  # rows per DELETE
PRUNE_EVERY = 600.0  # seconds between two passes of serve's pruner (at most)
PRUNE_REST = 1.0  # serve's pruner sleeps this many times a batch's time after it
TURN_WAIT = 0.2  # seconds to wait when another process's batch is running


def prune_finished(db: Database, older_than: float, statuses: Sequence[str] = FINISHED,
                   batch_size: int = PRUNE_BATCH, rest: float = 0.0) -> int:
    """Delete tasks in `statuses` last changed more than `older_than` seconds ago
    (by the database's clock, fixed at the start); return how many. After each
    batch, sleep `rest` times as long as it took."""
    before = store.cutoff(db, older_than).before
    assert before is not None
    deleted, after = 0, -(2**63)
    while True:
        started = time.monotonic()
        got = store.prune(db, statuses=statuses, before=before, after_id=after,
                          limit=batch_size)
        if got is None:  # another process's batch is running
            gevent.sleep(TURN_WAIT)
            continue
        if not got:
            store.prune_keys(db)  # (the keys of concurrency limits left without a task)
            return deleted
        deleted += len(got)
        after = max(got)
        if rest:
            gevent.sleep(rest * (time.monotonic() - started))


class Pruner:
    """serve's service: every PRUNE_EVERY seconds (or a tenth of PRUNE_AFTER,
    whichever is shorter), delete finished tasks older than PRUNE_AFTER."""

    def __init__(self, settings: Settings, should_stop: Callable[[], bool]) -> None:
        self.after = settings.prune_after or 0.0
        self.db = ReconnectingConnection(settings, "pruner", should_stop=should_stop)
        self._pruned = 0

    def stats(self) -> dict[str, int]:
        return {"pruned": self._pruned}

    def run(self) -> None:
        while True:
            deleted = prune_finished(self.db, self.after, rest=PRUNE_REST)
            if deleted:
                self._pruned += deleted
                log.info("Pruned %d finished tasks last changed more than %gs ago",
                         deleted, self.after)
            gevent.sleep(min(PRUNE_EVERY, max(self.after / 10, 1.0)))
