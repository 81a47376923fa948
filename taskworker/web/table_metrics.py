"""The gauges about the whole tasks table, exported by one process at a time
(the reporter, chosen through the database: reporter.py), so that a sum() over
every process counts the table once:

    taskworker_queue_depth{status}
    taskworker_tasks_by_queue, taskworker_tasks_by_name, ... (backlog_metrics.py)

and, from every process, taskworker_table_reporter: 1 on the one exporting them.

They come from a service with its own connection, every DEPTH_EVERY seconds,
which first takes or renews the reporter's row and samples only if it has it.
Pending and in-progress tasks are counted through their partial indexes,
finished ones exactly while the table is small and estimated from the planner's
statistics once it is not, so a sample never scans the table; a scrape reads
the last sample and never queries the database.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg2
from gevent.event import Event
from prometheus_client.core import GaugeMetricFamily, Metric

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection, Stopped
from ..store.database import first_line
from ..store.tasks import FINISHED
from .backlog_metrics import BacklogMetrics
from .reporter import ReporterLease

DEPTH_EVERY = 5.0  # seconds between queue depth samples
REPORTER_TTL = 3 * DEPTH_EVERY  # a reporter that stops renewing is replaced after this
EXACT_PAGES = 2048  # finished tasks are counted exactly up to this table size (16 MB)


class TableMetrics:
    """A collector of the last sample, and the service that takes the samples."""

    def __init__(self, settings: Settings, holder: str, should_stop: Callable[[], bool]) -> None:
        self.lease = ReporterLease(holder, REPORTER_TTL)
        self.backlog = BacklogMetrics(settings, DEPTH_EVERY)  # by queue and by task name
        self.db = ReconnectingConnection(settings, "metrics", should_stop=should_stop)
        self.depth: dict[str, float] = {}  # tasks by status, from the last sample
        self._stop = Event()
        self._last_problem: str | None = None

    def sample_forever(self) -> None:
        """Service: sample every DEPTH_EVERY seconds while this process is the
        reporter; hand the reporter's row back when told to stop."""
        while not self._stop.is_set():
            try:
                self.sample()
                self._last_problem = None
            except Stopped:
                raise
            except Exception as exc:  # a statement error: keep the last values, say it once
                problem = f"{type(exc).__name__}: {first_line(exc)}"
                if problem != self._last_problem:
                    log.warning("Could not sample the queue depth: %s", problem)
                self._last_problem = problem
            self._stop.wait(DEPTH_EVERY)
        try:
            self.lease.release(self.db)
        except (Stopped, psycopg2.Error):
            pass  # (the database is away: the row runs out by itself within REPORTER_TTL)

    def stop(self) -> None:
        """Shutdown: stop reporting; another process takes over at its next sample."""
        self._stop.set()

    def sample(self) -> None:
        if not self.lease.renew(self.db):
            self.depth = {}
            self.backlog.clear()
            return
        depth = store.active_depth(self.db)
        sample = {"pending": float(depth.pending), "in_progress": float(depth.in_progress)}
        if depth.pages <= EXACT_PAGES:
            finished: dict[str, float] | None = {
                **dict.fromkeys(FINISHED, 0), **store.finished_counts(self.db)}
        else:
            finished = self._estimate(depth)
        if finished is None:  # (never analyzed: no estimate yet, keep the last one)
            finished = {s: self.depth[s] for s in FINISHED if s in self.depth}
        self.depth = {**sample, **finished}
        self.backlog.sample(self.db)

    def _estimate(self, depth: store.ActiveDepth) -> dict[str, float] | None:
        """Finished tasks by status from the table's size now and the shares of
        each status at the last ANALYZE, as the planner estimates row counts."""
        if depth.reltuples < 0 or depth.relpages <= 0:
            return None
        shares = store.status_shares(self.db)
        if shares is None:
            return None
        finished_share = sum(shares.get(s, 0.0) for s in FINISHED)
        if finished_share <= 0:
            return None
        total = max(depth.reltuples / depth.relpages * depth.pages
                    - depth.pending - depth.in_progress, 0.0)
        return {s: round(total * shares.get(s, 0.0) / finished_share) for s in FINISHED}

    def collect(self) -> Iterator[Metric]:
        reporting = self.lease.held()
        yield GaugeMetricFamily(
            "taskworker_table_reporter",
            "1 on the one process exporting the gauges about the whole table (queue depth, "
            "backlog), chosen through the database; 0 on the others.",
            value=1 if reporting else 0)
        if not reporting:
            return
        if self.depth:
            family = GaugeMetricFamily(
                "taskworker_queue_depth",
                f"Tasks in the table by status, sampled every {DEPTH_EVERY:g}s (finished "
                "statuses are estimated from planner statistics on a large table); "
                "exported by one process only (taskworker_table_reporter).",
                labels=["status"])
            for status, count in self.depth.items():
                family.add_metric([status], count)
            yield family
        yield from self.backlog.collect()
