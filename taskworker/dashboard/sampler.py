"""Counts and the chart, sampled in the background while someone looks.

Pages read the latest sample and say how old it is; they never count. While a
page was requested within the last IDLE_AFTER seconds the sampler reads, every
EVERY seconds: the live backlog (pending, scheduled, claimed and running tasks
by queue and task name, and the oldest pending task's wait: pending and
in-progress rows only, through their partial indexes), and the tasks done and in
error per minute since its last look (through the index of finished tasks'
times). The full count
by status, queue and name scans the table: it runs every FULL_EVERY seconds on a
small table, and less often on a large one, so that it takes at most BUDGET of
the time. An unwatched dashboard samples nothing (its search indexer,
indexer.py, goes on: it must keep up with the completions).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import gevent
from gevent.event import Event

from ..logs import log
from ..store import admin
from ..store import dashboard as store
from .pool import Pool, Unavailable

EVERY = 3.0  # seconds between two samples while watched
FULL_EVERY = 10.0  # seconds between two full counts, at least
BUDGET = 0.02  # share of the time the full count may take
IDLE_AFTER = 60.0  # seconds without a page request after which sampling stops
HOUR = 3600


class Sample(NamedTuple):
    at: float  # monotonic time taken (0: never)
    value: object


class Sampler:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.backlog = Sample(0.0, [])  # list[admin.Backlog]
        self.counts = Sample(0.0, [])  # list[store.Count]
        self.minutes: dict[int, store.Minute] = {}
        self.minutes_at = 0.0
        self.now = 0.0  # the database's clock at the last sample (epoch seconds)
        self.count_took = 0.0  # seconds the last full count took
        self.problem: str | None = None  # why the last sample failed
        self._wanted = Event()
        self._last_request = 0.0
        self._next_full = 0.0
        self._chart_since: float | None = None  # database epoch of the chart's next read

    def watched(self) -> None:
        """A page was requested: keep (or start) sampling."""
        self._last_request = time.monotonic()
        self._wanted.set()

    def run(self) -> None:
        while True:
            if time.monotonic() - self._last_request > IDLE_AFTER:
                self._wanted.clear()
                self._wanted.wait()
            try:
                self.sample()
                self.problem = None
            except Unavailable as exc:  # (logged by the pool)
                self.problem = str(exc)
            gevent.sleep(EVERY)

    def sample(self) -> None:
        with self.pool.connection() as db:
            self.backlog = Sample(time.monotonic(), admin.backlog(db))
            now = self.now = store.clock(db)
            since = now - HOUR if self._chart_since is None else self._chart_since
            since = max(since, now - HOUR)
            for minute in store.finished_per_minute(db, since - since % 60):
                self.minutes[minute.at] = minute
            self._chart_since = now - 60  # the current minute and the last are read again
            cut = now - HOUR - 60
            self.minutes = {at: m for at, m in self.minutes.items() if at >= cut}
            self.minutes_at = time.monotonic()
        if time.monotonic() >= self._next_full:
            started = time.monotonic()
            with self.pool.connection() as db:
                found = store.counts(db)
            self.count_took = time.monotonic() - started
            self.counts = Sample(time.monotonic(), found)
            self._next_full = started + max(FULL_EVERY, self.count_took / BUDGET)
            if self.count_took > 1:
                log.debug("Dashboard: counting every task took %.1fs", self.count_took)
