"""Prometheus metrics and a health check for `serve`, on METRICS_PORT.

One small WSGI app on gevent's own HTTP server (no threads):

    GET /metrics   Prometheus text format, from a registry of our own (not the
                   process-wide default one)
    GET /healthz   200 {"status": "ok", ...} or 503 {"status": "unhealthy",
                   "problems": [...]} naming what is wrong: a side job (fetcher,
                   heartbeat, completer, listener) died, a connection has failed
                   for longer than HEALTH_MAX_DOWNTIME, or it was lost
                   RECENT_LOSSES (5) times within HEALTH_MAX_DOWNTIME (it keeps
                   being dropped), or the process is shutting down

Counts that the processor keeps anyway (claims, rescues, outcomes written,
reconnects, tasks held) are read at scrape time by a collector, so the hot path
pays nothing for them; the one thing measured per task is its run time (one
histogram observation). The queue depth comes from a side greenlet with its own
connection, every DEPTH_EVERY seconds: pending and in-progress tasks are
counted through their partial indexes, finished ones exactly while the table is
small and estimated from the planner's statistics once it is not, so a scrape
never scans the table.
"""
from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .store import sql
from .db import Link, Stopped, first_line
from .inflight import DONE, ERROR, RELEASE, RETRY
from .logs import log
from .pruner import FINISHED

if TYPE_CHECKING:
    from .worker import Processor

DEPTH_EVERY = 5.0  # seconds between queue depth samples
EXACT_PAGES = 2048  # finished tasks are counted exactly up to this table size (16 MB)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                    300, 600, float("inf"))
WATCHED_JOBS = ("fetcher", "heartbeat", "completer", "listener")

StartResponse = Callable[..., Any]


class MetricsError(Exception):
    """The metrics server cannot start; str() is one line for the user."""


class Metrics:
    """The registry, the HTTP server and the depth sampler of one Processor."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.settings = processor.settings
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
        self.link = Link(self.settings, "metrics", should_stop=lambda: processor.stopping)
        self.registry.register(_Counts(self))
        self.server: WSGIServer | None = None
        self._metrics_app = make_wsgi_app(self.registry)
        self._last_problem: str | None = None

    # --- the server

    def serve(self) -> None:
        """Bind and start answering; MetricsError when the address cannot be used."""
        host, port = self.settings.metrics_host, self.settings.metrics_port
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server = WSGIServer((host, port), self.app, spawn=10, log=None, error_log=log)
        try:
            server.start()
        except OSError as exc:
            # args[1] is the bare message: gevent appends the address to strerror.
            reason = exc.args[1] if len(exc.args) == 2 else str(exc) or type(exc).__name__
            raise MetricsError(f"cannot serve metrics on {shown}: {reason}") from None
        self.server = server
        log.info("Serving metrics on http://%s/metrics", shown)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
        self.link.close()

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            problems = self.problems()
            body: dict[str, object] = {"status": "unhealthy" if problems else "ok",
                                       "holder": self.processor.holder}
            if problems:
                body["problems"] = problems
            else:
                body["in_flight"] = len(self.processor.inflight)
            status = "503 Service Unavailable" if problems else "200 OK"
            return _reply(start_response, status, json.dumps(body) + "\n", "application/json")
        if path in ("/metrics", "/"):
            return self._metrics_app(environ, start_response)
        return _reply(start_response, "404 Not Found", "not found: try /metrics or /healthz\n",
                      "text/plain")

    # --- health

    def problems(self) -> list[str]:
        """What is wrong with this process, one short phrase each; [] when healthy."""
        p = self.processor
        if p.failed:
            return [p.failed]
        if p.stop_requested.is_set():
            return ["shutting down"]
        found = []
        for name in WATCHED_JOBS:
            job = p.side_jobs.get(name)
            if job is not None and job.dead:
                found.append(f"{name} is not running")
        now = time.monotonic()
        bound = self.settings.health_max_downtime
        for name, since, losses in self._connections():
            if since is not None and now - since > bound:
                found.append(f"database connection ({name}) down for {now - since:.0f}s")
            elif len(losses) == losses.maxlen and now - losses[0] <= bound:
                found.append(f"database connection ({name}) lost {len(losses)} times "
                             f"in {now - losses[0]:.0f}s")
        return found

    def _connections(self) -> Iterator[tuple[str, float | None, deque[float]]]:
        """Each connection's name, since when it fails (None: it works) and when
        it was last lost."""
        p = self.processor
        for link in (p.fetcher.link, p.heartbeat.link, p.completer.link, self.link):
            yield link.name, link.failing_since, link.losses
        if "listener" in p.side_jobs:
            yield "listener", p.listener.down_since, p.listener.losses

    # --- queue depth

    def sample_forever(self) -> None:
        """Side job: sample the queue depth every DEPTH_EVERY seconds."""
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
        pending, running, pages, reltuples, relpages = self.link.query(sql.depth_active)[0]
        self.queue_depth.labels("pending").set(pending)
        self.queue_depth.labels("in_progress").set(running)
        if pages <= EXACT_PAGES:
            finished: dict[str, float] | None = dict.fromkeys(FINISHED, 0)
            for status, count in self.link.query(sql.depth_finished):
                finished[status] = count  # type: ignore[index]
        else:
            finished = self._estimate(pages, reltuples, relpages, pending + running)
        if finished is not None:  # (never analyzed: no estimate yet, keep the last one)
            for status, count in finished.items():
                self.queue_depth.labels(status).set(count)

    def _estimate(self, pages: int, reltuples: float, relpages: int,
                  active: int) -> dict[str, float] | None:
        """Finished tasks by status from the table's size now and the shares of
        each status at the last ANALYZE, as the planner estimates row counts."""
        if reltuples < 0 or relpages <= 0:
            return None
        rows = self.link.query(sql.status_frequencies)
        if not rows or rows[0][0] is None:
            return None
        shares = dict(zip(rows[0][0], rows[0][1], strict=False))
        finished_share = sum(shares.get(s, 0.0) for s in FINISHED)
        if finished_share <= 0:
            return None
        total = max(reltuples / relpages * pages - active, 0.0)
        return {s: round(total * shares.get(s, 0.0) / finished_share) for s in FINISHED}


class _Counts:
    """Reads the counts the processor keeps, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        p = self.metrics.processor
        counts = p.completer.counts
        finished = CounterMetricFamily(
            "taskworker_tasks_finished",
            "Tasks this process ended, by final status (outcome written to the table).",
            labels=["status"])
        finished.add_metric(["done"], counts[DONE])
        finished.add_metric(["error"], counts[ERROR])
        yield finished
        yield CounterMetricFamily(
            "taskworker_task_retries",
            "Failed runs put back to pending to be retried after a backoff (MAX_RETRIES).",
            value=counts[RETRY])
        yield CounterMetricFamily(
            "taskworker_tasks_given_back",
            "Claimed tasks given back to pending untouched, on shutdown.",
            value=counts[RELEASE])
        yield CounterMetricFamily(
            "taskworker_lease_losses",
            "Outcomes discarded because another process had taken the task over.",
            value=p.completer.lease_lost)
        yield CounterMetricFamily(
            "taskworker_tasks_claimed", "Tasks this process claimed.", value=p.fetcher.claimed)
        yield CounterMetricFamily(
            "taskworker_tasks_rescued",
            "Tasks whose lease had expired that this process took back (to pending, or "
            "parked in error after MAX_RESCUES).",
            value=p.fetcher.rescued)
        reconnects = CounterMetricFamily(
            "taskworker_database_reconnects",
            "Connections re-opened after being lost, by connection.", labels=["connection"])
        for link in (p.fetcher.link, p.heartbeat.link, p.completer.link, self.metrics.link):
            reconnects.add_metric([link.name], link.reconnects)
        if "listener" in p.side_jobs:
            reconnects.add_metric(["listener"], p.listener.reconnects)
        yield reconnects
        yield GaugeMetricFamily(
            "taskworker_tasks_in_flight",
            "Tasks this process holds: claimed and not yet written (queued or running).",
            value=len(p.inflight))
        yield GaugeMetricFamily(
            "taskworker_workers_busy", "Worker greenlets running a task.", value=len(p.running))
        yield GaugeMetricFamily(
            "taskworker_workers", "Worker greenlets (WORKER_COUNT).",
            value=p.settings.worker_count)
        yield GaugeMetricFamily(
            "taskworker_healthy", "1 when /healthz answers 200, else 0.",
            value=0 if self.metrics.problems() else 1)


def _reply(start_response: StartResponse, status: str, text: str,
           content_type: str) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]
