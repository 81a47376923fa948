"""The task processor: a pool of worker greenlets and the services that feed it.

    exchange ──claims──▶ dispatch ──▶ workers (pool) ──outcomes──▶ completer
    (fetcher: what to claim)  ◀──── outcomes, written with the next claims ────┘
       ▲ wake
    listener (NOTIFY)          heartbeat (extends every lease this process holds)
    lease guard (gives back what the heartbeat cannot renew)
    pruner (PRUNE_AFTER)       metrics sampler + web server (METRICS_PORT)
    dashboard (DASHBOARD_PORT or --dashboard; its own connections)
    scheduler (periodic tasks: enqueues each tick once across processes)

Each service has its own connection (the exchange has two: its claiming and
its writing lane, "fetcher" and "completer"); workers have none (they only run
the handler), so a process uses four connections whatever WORKER_COUNT is, plus one
for the pruner, the metrics sampler and the scheduler each when they run. It
claims only with the lanes' and the heartbeat's open; short of a slot for one of
them, it steps back (shortage.py) so that another process can go on. If a
service dies, the process says why in one line and stops, and exits 1.

Shutdown, on the first SIGINT/SIGTERM: stop claiming, give back the tasks still
queued, let running tasks finish for up to SHUTDOWN_TIMEOUT, then cancel the rest
and give them back too (a task given back keeps its attempt count), write every
outcome, and exit 0. A second signal skips the wait.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping

import gevent
from gevent.event import Event
from gevent.pool import Pool

from .. import hooks
from ..dashboard.app import Dashboard
from ..handlers import Handler
from ..logs import log, seconds
from ..registry import TaskDef
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ConnectionState, ReconnectingConnection, Stopped
from ..store.database import first_line
from ..web.metrics import Counted, Metrics
from ..web.server import WebServer
from .catalog import Catalog
from .completer import Completer
from .dispatch import Dispatch
from .exchange import Exchange
from .heartbeat import Heartbeat
from .listener import Listener
from .monitor import HubMonitor
from .outcomes import GIVE_BACK, Outcome
from .pruner import Pruner
from .scheduler import Scheduler
from .shortage import Shortage
from .worker import Worker

GIVE_BACK_GRACE = 10.0  # seconds the final writes may wait for the database
HAND_BACK_GRACE = 2.0  # seconds the metrics reporter's row may take to be handed back


def holder_name() -> str:
    """host:pid:random, unique per process start; recorded as tasks.locked_by."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Processor:
    def __init__(self, settings: Settings, default: tuple[Handler, bool] | None,
                 definitions: dict[str, TaskDef]) -> None:
        self.settings = settings
        self.catalog = Catalog(settings, default, definitions)
        self.holder = holder_name()
        self.dispatch = Dispatch(settings.worker_count, settings.lease_seconds)
        self.dispatch.start_guards = dict(self.catalog.start_guards)
        self.pool = Pool(settings.worker_count)
        self.stop_requested = Event()
        self.stop_now = Event()  # second signal: do not wait for running tasks
        self._stopping = False  # no more claims
        self._giving_up = False  # final writes: stop waiting for the database
        self._cancelling = False  # shutdown is killing the workers (GreenletExit)
        self._failure: str | None = None  # why a service died, if one did
        self._signals = 0  # SIGINT/SIGTERM handled
        self.monitor = HubMonitor(settings.shutdown_timeout, lambda: self._signals)
        stopping, giving_up = (lambda: self._stopping), (lambda: self._giving_up)

        self.completer = Completer(settings, self.dispatch, frees_slots=bool(self.catalog.limits))
        self.heartbeat = Heartbeat(settings, self.holder, self.dispatch, giving_up)
        self.exchange = Exchange(settings, self.holder, self.dispatch, self.catalog,
                                 self.completer, self._may_claim, stopping, giving_up)
        self.listener = Listener(settings, self.dispatch, stopping) if settings.listen else None
        self.pruner = Pruner(settings, stopping) if settings.prune_after else None
        self.metrics = Metrics(settings, self.holder, stopping) if settings.metrics_port \
            else None
        periodic = self.catalog.periodic()
        self.scheduler = Scheduler(settings, self.holder, periodic, stopping) if periodic \
            else None
        self.web = WebServer(settings, self, self.metrics) if self.metrics else None
        self.dashboard = Dashboard(settings) if settings.dashboard_port else None
        optional = (self.pruner, self.metrics.table if self.metrics else None, self.scheduler)
        self.shortage = Shortage(
            self.exchange.claiming, self.exchange.writing, self.heartbeat.db,
            others=[owner.db for owner in optional if owner is not None],
            listener=self.listener, lease=settings.lease_seconds,
            holding=self.dispatch.held_count, resumed=self.dispatch.wake)
        self.worker = Worker(settings, self.catalog, self.dispatch, self.completer.put,
                             lambda: self._cancelling,
                             self.metrics.task_duration.observe if self.metrics else _ignore,
                             self.heartbeat.started, self.holder, self.completer.written_apart,
                             self.completer.frees_slots)
        # The services, in the order they start; the fetcher last, once all is ready.
        self.services: dict[str, Callable[[], None]] = {
            "completer": self.exchange.write_loop, "heartbeat": self.heartbeat.run,
            "lease guard": self.heartbeat.guard}
        if self.metrics:
            self.services["metrics"] = self.metrics.table.sample_forever
        if self.listener:
            self.services["listener"] = self.listener.run
        if self.pruner:
            self.services["pruner"] = self.pruner.run
        if self.scheduler:
            self.services["scheduler"] = self.scheduler.run
        self.services["fetcher"] = self.exchange.claim_loop
        self._running: dict[str, gevent.Greenlet] = {}
        if self.metrics:
            self.metrics.observe(self)

    def _may_claim(self) -> bool:
        """The heartbeat renews leases (a process holds no claim it cannot keep),
        and the process is not stepping back for want of connection slots."""
        return self.heartbeat.renewing() and self.shortage.running()

    # --- what the web side reads (web.health.Observed)

    def _connections(self) -> list[ReconnectingConnection]:
        """Every connection this process has, in one list: /healthz and the
        reconnect metric read it, shutdown closes it."""
        owners = (self.heartbeat, self.listener, self.pruner,
                  self.metrics.table if self.metrics else None, self.scheduler)
        return [self.exchange.claiming, self.exchange.writing,
                *(owner.db for owner in owners if owner is not None)]

    def connections(self) -> list[ConnectionState]:
        return [db.state() for db in self._connections()]

    def stats(self) -> dict[str, Mapping[str, float]]:
        parts: dict[str, Counted | None] = {"dispatch": self.dispatch, "fetcher": self.exchange,
            "completer": self.completer, "listener": self.listener, "pruner": self.pruner,
            "monitor": self.monitor, "scheduler": self.scheduler,
            "horizon": self.heartbeat.horizon}
        return {name: part.stats() for name, part in parts.items() if part is not None}

    def failure(self) -> str | None:
        return self._failure

    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    def dead_services(self) -> list[str]:
        return [name for name, job in self._running.items() if job.dead]

    def blocked(self, within: float) -> str | None:
        """A handler blocked the process longer than SHUTDOWN_TIMEOUT, less than
        `within` seconds ago: what and how long."""
        block = self.monitor.last_long_block(within)
        if block is None or block.ended is None:
            return None
        return (f"{block.where} blocked the process for {block.ended - block.started:.0f}s "
                f"({time.monotonic() - block.ended:.0f}s ago)")

    # --- running

    def run(self) -> int:
        """Process tasks until a signal; return the exit code."""
        s = self.settings
        log.info("Starting task processor with %d workers, fetching every %s",
                 s.worker_count, seconds(s.fetch_interval))
        hooks.call(hooks.PROCESS_STARTED)  # (the application's: hooks.py)
        if self.web:
            self.web.start()  # first: a port in use stops serve before any claim
        if self.dashboard:
            self.dashboard.start()
        gevent.signal_handler(signal.SIGINT, self._on_signal)
        gevent.signal_handler(signal.SIGTERM, self._on_signal)
        self.monitor.start()
        self.heartbeat.presence.register(self.heartbeat.db)  # taskworker_processes
        for name, run in self.services.items():
            if name == "fetcher":
                for n in range(1, s.worker_count + 1):
                    log.info("Starting worker %d", n)
                    self.pool.spawn(self.worker.loop, n)
            self._running[name] = gevent.spawn(self._guard, name, run)
        gevent.spawn_later(GC_SETTLE_AFTER, settle_garbage_collector)
        self.stop_requested.wait()
        self._shutdown()
        hooks.call(hooks.PROCESS_STOPPED)
        if self._failure:
            log.error("Stopped because the %s; exit status 1", self._failure)
            return 1
        log.info("All workers have completed, shutdown successful")
        return 0

    def _guard(self, name: str, run: Callable[[], None]) -> None:
        """Run a service; if it dies, say why in one line and stop the process."""
        try:
            run()
        except Stopped:
            pass
        except Exception as exc:
            self._failure = f"{name} failed: {type(exc).__name__}: {first_line(exc)}"
            log.error("%s; stopping", self._failure)
            self.stop_requested.set()

    def _on_signal(self) -> None:
        # Runs in its own greenlet: only set flags, the main greenlet does the work.
        self._signals += 1
        if not self.stop_requested.is_set():
            log.info("Shutdown signal received, stopping task processor gracefully...")
            self.stop_requested.set()
        elif not self.stop_now.is_set():
            log.info("Second shutdown signal received, cancelling running tasks now")
            self.stop_now.set()

    # --- shutdown, in order: stop claiming, drain the workers, write, close

    def _shutdown(self) -> None:
        s = self.settings
        self._stopping = True
        self.shortage.stop()  # (no more stepping back: the final writes may go out)
        self.dispatch.wake()
        fetcher = self._running["fetcher"]
        fetcher.join(timeout=s.statement_timeout + s.connect_timeout)
        fetcher.kill()
        if "listener" in self._running:
            self._running["listener"].kill()
        if self.metrics:  # it hands the reporter's row back meanwhile (web/reporter.py)
            self.metrics.table.stop()

        queued = self.dispatch.close()
        for task in queued:
            self.completer.put(Outcome(task, 0, GIVE_BACK))
        if queued:
            log.info("Gave back %d queued tasks to pending", len(queued))
        running = self.dispatch.running_count()
        if running and not self.stop_now.is_set():  # (else the wait is silent for long)
            log.info("Waiting up to %s for %d running %s to finish; press Ctrl+C again to "
                     "stop %s now (given back to pending)", seconds(s.shutdown_timeout),
                     running, "task" if running == 1 else "tasks",
                     "it" if running == 1 else "them")

        deadline = time.monotonic() + s.shutdown_timeout
        while not self.pool.join(timeout=0.05):
            if self.stop_now.is_set() or time.monotonic() >= deadline:
                if self.dispatch.running_count():
                    log.info("Cancelling %d running tasks and giving them back to pending",
                             self.dispatch.running_count())
                self._cancelling = True
                self.pool.kill(block=True, timeout=5)
                break

        # Outcomes first, while leases are still kept alive; then the rest.
        self.completer.stop()
        completer = self._running["completer"]
        completer.join(timeout=GIVE_BACK_GRACE)
        if not completer.ready():
            self._giving_up = True
            completer.join(timeout=2)
            why = ("database unreachable" if self.exchange.writing.failing
                   else f"the database did not take them within {GIVE_BACK_GRACE:g}s")
            log.error("Could not write %d outcomes: %s; those tasks return to pending when "
                      "their lease expires", self.completer.unwritten(), why)
            completer.kill()
        else:
            if self._give_back_orphans():  # (else no slot, say: unregistering would wait too)
                self.heartbeat.presence.unregister(self.exchange.writing, GIVE_BACK_GRACE)
        self._giving_up = True
        if self.metrics:  # (not handed back in time: the row runs out by itself)
            self._running["metrics"].join(timeout=HAND_BACK_GRACE)
        for job in self._running.values():
            job.kill()
        for db in self._connections():
            db.close()
        self.worker.transactions.close()
        if self.web:
            self.web.stop()
        if self.dashboard:
            self.dashboard.stop()

    def _give_back_orphans(self) -> bool:
        """Give back whatever the table still says this process holds: a claim
        whose reply never arrived (the fetcher cut off mid-statement, a connection
        lost with the reply). Every known task has had its outcome written.
        Whether the database answered."""
        try:
            with gevent.Timeout(GIVE_BACK_GRACE, TimeoutError("no answer from the database")):
                ids = store.give_back_orphans(self.exchange.writing, holder=self.holder, known=[])
        except Exception as exc:  # the database went away just now: leases expire
            log.error("Could not check for tasks left claimed: %s", first_line(exc))
            return False
        if ids:
            log.info("Gave back %d tasks claimed while shutting down: %s",
                     len(ids), ", ".join(map(str, ids)))
        return True


GC_SETTLE_AFTER = 0.5  # seconds after start: the workers wait for their first task


def settle_garbage_collector() -> None:
    """Keep what start-up made (modules, the workers' greenlets, the services)
    out of every later garbage collection: a full collection traverses every
    tracked object, and with WORKER_COUNT=10000 it stopped the whole process for
    40-60 ms about once a second (every pickup in that window waited for it).
    Called once the workers wait for their first task (their frames are made
    by then). What the tasks allocate afterwards is collected as before, with
    a first generation ten times the default: young objects of a task that
    waits die before they are collected, instead of moving up to the
    generation that full collections traverse."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young * 10, middle, old)


def _ignore(seconds: float) -> None:
    pass
