"""Prometheus metrics of one serve process.

Counts the services keep anyway (claims, rescues, outcomes written, reconnects,
tasks held) are read from their stats() at scrape time by a collector, so the
hot path pays nothing for them; the one thing measured per task is its run time
(one histogram observation, fed by the workers). The queue depth comes from a
service with its own connection, every DEPTH_EVERY seconds: pending and
in-progress tasks are counted through their partial indexes, finished ones
exactly while the table is small and estimated from the planner's statistics
once it is not, so a scrape never scans the table. The same service samples the
backlog by queue and by task name (backlog_metrics.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection, Stopped
from ..store.database import first_line
from ..store.tasks import FINISHED
from .backlog_metrics import BacklogMetrics
from .health import Observed, problems

DEPTH_EVERY = 5.0  # seconds between queue depth samples
EXACT_PAGES = 2048  # finished tasks are counted exactly up to this table size (16 MB)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                    300, 600, float("inf"))


class Metrics:
    """The registry, the per-task histogram and the depth sampler of one process."""

    def __init__(self, settings: Settings, should_stop: Callable[[], bool]) -> None:
        self.max_downtime = settings.health_max_downtime
        self.registry = CollectorRegistry(auto_describe=True)
        self.task_duration = Histogram(
            "taskworker_task_duration_seconds",
            "Run time of one run of a task (the handler), seconds.",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge(
            "taskworker_queue_depth",
            f"Tasks in the table by status, sampled every {DEPTH_EVERY:g}s (finished "
            "statuses are estimated from planner statistics on a large table).",
            ["status"], registry=self.registry)
        self.backlog = BacklogMetrics(settings, DEPTH_EVERY)  # by queue and by task name
        self.registry.register(self.backlog)
        self.db = ReconnectingConnection(settings, "metrics", should_stop=should_stop)
        self._last_problem: str | None = None

    def observe(self, process: Observed) -> None:
        """Export `process`'s counts from now on (read at each scrape)."""
        self.registry.register(_Counts(process, self.max_downtime))

    def sample_forever(self) -> None:
        """Service: sample the queue depth every DEPTH_EVERY seconds."""
        while True:
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
            gevent.sleep(DEPTH_EVERY)

    def sample(self) -> None:
        depth = store.active_depth(self.db)
        self.queue_depth.labels("pending").set(depth.pending)
        self.queue_depth.labels("in_progress").set(depth.in_progress)
        if depth.pages <= EXACT_PAGES:
            finished: dict[str, float] | None = {
                **dict.fromkeys(FINISHED, 0), **store.finished_counts(self.db)}
        else:
            finished = self._estimate(depth)
        if finished is not None:  # (never analyzed: no estimate yet, keep the last one)
            for status, count in finished.items():
                self.queue_depth.labels(status).set(count)
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


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


class _Counts:
    """Reads every service's stats() at scrape time."""

    def __init__(self, process: Observed, max_downtime: float) -> None:
        self.process = process
        self.max_downtime = max_downtime

    def collect(self) -> Iterator[Metric]:
        stats = self.process.stats()
        written, fetched = stats["completer"], stats["fetcher"]
        dispatch = stats["dispatch"]
        finished = CounterMetricFamily(
            "taskworker_tasks_finished",
            "Tasks this process ended, by final status (outcome written to the table).",
            labels=["status"])
        finished.add_metric(["done"], written["done"])
        finished.add_metric(["error"], written["error"])
        yield finished
        yield _counter(
            "taskworker_task_retries",
            "Failed runs put back to pending to be retried after a backoff (MAX_RETRIES).",
            written["retried"])
        yield _counter(
            "taskworker_tasks_given_back",
            "Claimed tasks given back to pending untouched, on shutdown.", written["given_back"])
        yield _counter(
            "taskworker_lease_losses",
            "Outcomes discarded because another process had taken the task over.",
            written["lease_lost"])
        yield _counter("taskworker_tasks_claimed", "Tasks this process claimed.",
                       fetched["claimed"])
        yield _counter(
            "taskworker_tasks_refused",
            "Tasks the claim ended in error unrun: payload over MAX_PAYLOAD_BYTES.",
            fetched["refused"])
        yield _counter(
            "taskworker_tasks_rescued",
            "Tasks whose lease had expired that this process took back (to pending, or "
            "parked in error after MAX_RESCUES).", fetched["rescued"])
        if "listener" in stats:
            yield _counter("taskworker_notifications",
                           "NOTIFY wake-ups received by the listener.",
                           stats["listener"]["notifications"])
        if "pruner" in stats:
            yield _counter("taskworker_tasks_pruned",
                           "Finished tasks deleted by serve's pruner (PRUNE_AFTER).",
                           stats["pruner"]["pruned"])
        yield _counter(
            "taskworker_hub_blocks",
            "Times a handler blocked the whole process for a second or more without yielding.",
            stats["monitor"]["blocks"])
        yield _counter(
            "taskworker_hub_blocked_seconds",
            "Seconds the whole process was blocked by handlers that did not yield.",
            stats["monitor"]["blocked_seconds"])
        reconnects = CounterMetricFamily(
            "taskworker_database_reconnects",
            "Connections re-opened after being lost, by connection.", labels=["connection"])
        for conn in self.process.connections():
            reconnects.add_metric([conn.name], conn.reconnects)
        yield reconnects
        yield GaugeMetricFamily(
            "taskworker_tasks_in_flight",
            "Tasks this process holds: claimed and not yet written (queued or running).",
            value=dispatch["held"])
        yield GaugeMetricFamily(
            "taskworker_outcomes_unwritten",
            "Outcomes waiting for the completer to write them.", value=written["unwritten"])
        yield GaugeMetricFamily(
            "taskworker_workers_busy", "Worker greenlets running a task.", value=dispatch["busy"])
        yield GaugeMetricFamily(
            "taskworker_workers", "Worker greenlets (WORKER_COUNT).", value=dispatch["workers"])
        yield GaugeMetricFamily(
            "taskworker_healthy", "1 when /healthz answers 200, else 0.",
            value=0 if problems(self.process, self.max_downtime) else 1)
