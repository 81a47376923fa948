"""Deleting finished tasks: the loop shared by `taskworker prune` and by `serve`
with PRUNE_AFTER set.

Deletes go in batches of PRUNE_BATCH rows, lowest ids first, each its own short
transaction, so neither workers nor producers wait on a long lock.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gevent

from .store import sql
from .db import Link
from .logs import log
from .settings import Settings

FINISHED = ("done", "error", "cancelled")  # the statuses a task never leaves by itself
PRUNE_BATCH = 10000  # rows per DELETE
PRUNE_EVERY = 600.0  # seconds between two passes of serve's pruner (at most)

Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


def prune_finished(query: Query, older_than: float, statuses: Sequence[str] = FINISHED,
                   batch_size: int = PRUNE_BATCH) -> int:
    """Delete tasks in `statuses` last changed more than `older_than` seconds ago
    (by the database's clock, fixed at the start); return how many."""
    before = query(sql.cutoff, {"seconds": older_than})[0][1]
    deleted, after = 0, -(2**63)
    while True:
        got = [row[0] for row in query(sql.prune, {
            "statuses": list(statuses), "before": before, "after": after,
            "limit": batch_size})]
        if not got:
            return deleted
        deleted += len(got)
        after = max(got)


class Pruner:
    """serve's side job: every PRUNE_EVERY seconds (or a tenth of PRUNE_AFTER,
    whichever is shorter), delete finished tasks older than PRUNE_AFTER."""

    def __init__(self, settings: Settings, should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.link = Link(settings, "pruner", should_stop=should_stop)
        self.pruned = 0

    def run(self) -> None:
        after = self.settings.prune_after or 0
        while True:
            deleted = prune_finished(self.link.query, after)
            if deleted:
                self.pruned += deleted
                log.info("Pruned %d finished tasks last changed more than %gs ago",
                         deleted, after)
            gevent.sleep(min(PRUNE_EVERY, max(after / 10, 1.0)))
