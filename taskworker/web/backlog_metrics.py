"""The backlog by queue and by task name, as Prometheus gauges.

    taskworker_tasks_by_queue{queue, state}          state: pending, scheduled, running
    taskworker_oldest_pending_seconds_by_queue{queue}
    taskworker_tasks_by_name{task, state}            task "(no name)": the default handler's
    taskworker_oldest_pending_seconds_by_name{task}

Labels are queue and task names only (never ids or payloads), and bounded: at
most MAX_SERIES queues and MAX_SERIES names, the largest; the rest are summed
under "(other)". The queues some live process serves (QUEUES), the queues of the
tasks this process registers, the paused ones, and the names some process has
registered (taskworker_processes, and this process's own) are always exported
(first, within the bound), 0 when they have nothing; so is every queue this
process has seen in a sample since it started (at most MAX_REMEMBERED, kept
after the rest within the bound): a queue that empties reads 0 instead of
vanishing, and alerts on it do not go absent. One process exports them for all
(table_metrics.py); a process that takes over exports the queues it knows, and
the others from their next task on.

Sampled by the metrics service (see table_metrics.py), never at scrape time: one
statement over pending and running rows only (through their partial indexes),
every DEPTH_EVERY seconds while it is quick, and less often when it is not, so
that it takes at most BUDGET of the sampler's time on a large backlog.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from .. import backlog, registry
from ..settings import Settings
from ..store import admin, processes
from ..store.database import Database

MAX_SERIES = 100  # queues, and task names, exported at most (the rest: "(other)")
MAX_REMEMBERED = 1000  # queues seen in earlier samples, exported at 0 once empty
BUDGET = 0.05  # share of the time the breakdown may take: 50 ms a query -> every 5 s at most
STATES = ("pending", "scheduled", "running")


class BacklogMetrics:
    """A collector yielding the last sample; `sample` takes a new one when due."""

    def __init__(self, settings: Settings, every: float) -> None:
        self.every = every
        self.served_queues = settings.queue_names or ()
        self.default_handler = settings.default_handler is not None
        self._next = 0.0  # monotonic time of the next sample
        self._queues: list[backlog.Total] = []
        self._names: list[backlog.Total] = []
        self._seen_queues: set[str] = set()  # in the samples since this process started

    def sample(self, db: Database) -> None:
        """Read the backlog if it is time to: every `every` seconds, or less often
        when the statement is slow (BUDGET)."""
        started = time.monotonic()
        if started < self._next:
            return
        rows = admin.backlog(db)
        took = time.monotonic() - started
        self._next = started + max(self.every, took / BUDGET)
        live = processes.live(db)
        served_queues: set[str | None] = {
            *self.served_queues, *(q for p in live for q in p.queues or ()),
            *(d.queue for d in registry.registered().values() if d.queue is not None),
            *(q.queue for q in processes.paused(db))}
        served_names: set[str | None] = {*registry.registered(),
                                         *(n for p in live for n in p.tasks)}
        if self.default_handler or any(p.default_handler for p in live):
            served_names.add(None)
        queues = {t.key: t for t in backlog.by_queue(rows)}
        names = {t.key: t for t in backlog.by_task(rows)}
        for key in queues:
            if key is not None and len(self._seen_queues) < MAX_REMEMBERED:
                self._seen_queues.add(key)
        for key in self._seen_queues:  # (zeros, ranked with the others by size)
            queues.setdefault(key, backlog.Total(key, 0, 0, 0, 0, None))
        self._queues = _bounded(queues, served_queues)
        self._names = _bounded(names, served_names)

    def clear(self) -> None:
        """Forget the last sample (another process reports now); the next
        sample is taken at once."""
        self._next = 0.0
        self._queues, self._names = [], []

    def collect(self) -> Iterator[Metric]:
        yield from _families("queue", "queue", self._queues)
        yield from _families("name", "task", self._names)


def _bounded(totals: dict[str | None, backlog.Total],
             always: Collection[str | None]) -> list[backlog.Total]:
    for key in always:
        totals.setdefault(key, backlog.Total(key, 0, 0, 0, 0, None))
    return backlog.bounded(sorted(totals.values(), key=lambda t: (t.key is not None, t.key or "")),
                           MAX_SERIES, always)


def _families(by: str, label: str, totals: Sequence[backlog.Total]) -> Iterator[Metric]:
    what = "queue" if by == "queue" else "task name"
    counts = GaugeMetricFamily(
        f"taskworker_tasks_by_{by}",
        f"Pending (due now), scheduled (due later) and running tasks by {what} "
        f"(at most {MAX_SERIES} {what}s, the rest summed under {backlog.OTHER}).",
        labels=[label, "state"])
    oldest = GaugeMetricFamily(
        f"taskworker_oldest_pending_seconds_by_{by}",
        f"Seconds the oldest due pending task of each {what} has waited (0: none).",
        labels=[label])
    for t in totals:
        key = backlog.NO_NAME if t.key is None else t.key
        # state="running": every task in progress, started or not (claimed), as
        # before started_at (migration 011): the series keep their meaning.
        for state, n in zip(STATES, (t.pending, t.scheduled, t.claimed + t.running),
                            strict=True):
            counts.add_metric([key, state], n)
        oldest.add_metric([key], t.oldest_pending_seconds or 0.0)
    yield counts
    yield oldest
