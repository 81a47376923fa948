"""The search indexer: keeps taskworker_search (the words of finished tasks that
the task list's text search reads) up to date, off the hot path.

It runs while the dashboard process runs, watched or not: it must keep up with
the completions, or searches fall back on reading the unindexed finished tasks
directly. Each pass is one statement (store/search.py: what it does and why
it misses no task) on a pooled connection. A pass that comes back with a full
batch (a backlog: a first start on an old table) is followed by the next after
a short pause, so that a backfill of a million rows leaves the server room for
the processes that serve; otherwise the next pass comes EVERY seconds later.
"""
from __future__ import annotations

import time

import gevent

from ..store import search
from .pool import Pool, Unavailable

EVERY = 2.0  # seconds between two passes once caught up
PAUSE = 0.5  # after a full batch, pause this share of the time the pass took (at least MIN)
MIN_PAUSE = 0.05


class Indexer:
    def __init__(self, pool: Pool, batch: int = search.BATCH) -> None:
        self.pool = pool
        self.batch = batch
        self.problem: str | None = None  # why the last pass failed
        self.copied = 0  # finished tasks copied since the start

    def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                with self.pool.connection() as db:
                    done = search.index_pass(db, self.batch)
                self.problem = None
            except Unavailable as exc:  # (logged by the pool)
                self.problem = str(exc)
                gevent.sleep(EVERY)
                continue
            self.copied += done.copied
            if done.copied >= self.batch:
                took = time.monotonic() - started
                gevent.sleep(max(MIN_PAUSE, PAUSE * took))
            else:
                gevent.sleep(EVERY)
