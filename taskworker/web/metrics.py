"""Prometheus metrics of one serve process.

Counts the services keep anyway (claims, rescues, outcomes written, reconnects,
tasks held) are read from their stats() at scrape time by a collector, so the
hot path pays nothing for them; the one thing measured per task is its run time
(one histogram observation, fed by the workers). The process's own resources
(process_*: memory, CPU, open files, start time), the Python running it
(python_info) and taskworker's version (taskworker_build_info) are the standard
series dashboards expect. The gauges about the whole table (queue depth,
backlog) are exported by one process only: table_metrics.py.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..settings import Settings
from .health import Observed, problems
from .table_metrics import TableMetrics

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                    300, 600, float("inf"))


class Counted(Protocol):
    """A part of the processor that keeps counters (Observed.stats gathers them)."""

    def stats(self) -> Mapping[str, float]: ...


class Metrics:
    """The registry, the per-task histogram and the table's sampler of one process."""

    def __init__(self, settings: Settings, holder: str, should_stop: Callable[[], bool]) -> None:
        self.max_downtime = settings.health_max_downtime
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("taskworker_build", "The taskworker release this process runs.",
             registry=self.registry).info({"version": __version__})
        self.task_duration = Histogram(
            "taskworker_task_duration_seconds",
            "Run time of one run of a task (the handler), seconds.",
            buckets=DURATION_BUCKETS, registry=None)
        self.registry.register(_WithoutCreated(self.task_duration))
        self.table = TableMetrics(settings, holder, should_stop)
        self.registry.register(self.table)

    def observe(self, process: Observed) -> None:
        """Export `process`'s counts from now on (read at each scrape)."""
        self.registry.register(_Counts(process, self.max_downtime))


class _WithoutCreated:
    """A collector's series without the `_created` one prometheus-client adds to a
    histogram (the time it was made: OpenMetrics' business, and one more series
    per histogram for Prometheus to store). Dropped here, for taskworker's own
    registry only, rather than with prometheus-client's switch
    (disable_created_metrics), which is process-wide and would change the metrics
    of the application's handlers too."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        for family in self.collector.collect():
            family.samples = [s for s in family.samples if s.name != family.name + "_created"]
            yield family


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
            "taskworker_vacuum_held_seconds",
            "How long the heartbeat has seen the oldest transaction, slot or prepared "
            "transaction that holds the database's xmin horizon (0: none).",
            value=stats["horizon"]["held_seconds"])
        yield GaugeMetricFamily(
            "taskworker_workers_busy", "Worker greenlets running a task.", value=dispatch["busy"])
        yield GaugeMetricFamily(
            "taskworker_workers", "Worker greenlets (WORKER_COUNT).", value=dispatch["workers"])
        yield GaugeMetricFamily(
            "taskworker_healthy", "1 when /healthz answers 200, else 0.",
            value=0 if problems(self.process, self.max_downtime) else 1)
