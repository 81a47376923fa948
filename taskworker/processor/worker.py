"""The task processor: a pool of worker greenlets and the side jobs that feed it.

    fetcher ──claims──▶ queue ──▶ workers (pool) ──outcomes──▶ completer
       ▲ wake                                                    (batched, fenced)
    listener (NOTIFY)          heartbeat (extends every lease this process holds)

Each side job has its own connection; workers have none (they only run the
handler), so a process uses four connections whatever WORKER_COUNT is.

Shutdown, on the first SIGINT/SIGTERM: stop claiming, give back the tasks still
queued, let running tasks finish for up to SHUTDOWN_TIMEOUT, then cancel the rest
and give them back too (a task given back keeps its attempt count), write every
outcome, and exit 0. A second signal skips the wait.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.queue import Queue

from .store import sql
from .completer import Completer
from .db import Stopped, first_line
from .fetcher import Fetcher
from .handlers import Handler, TaskContext
from .heartbeat import Heartbeat
from .inflight import DONE, ERROR, RELEASE, RETRY, InFlight, Outcome, Task
from .listener import Listener
from .logs import log, printable
from .metrics import Metrics
from .pruner import Pruner
from .settings import Settings

RETRY_CAP = 3600.0  # longest retry backoff, seconds
GIVE_BACK_GRACE = 10.0  # seconds the final writes may wait for the database


class TaskTimeout(Exception):
    pass


def holder_name() -> str:
    """host:pid:random, unique per process start; recorded as tasks.locked_by."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Processor:
    def __init__(self, settings: Settings, handler: Handler, takes_task: bool) -> None:
        self.settings = settings
        self.handler = handler
        self.takes_task = takes_task
        self.holder = holder_name()
        self.inflight = InFlight()
        self.queue: Queue = Queue()
        self.pool = Pool(settings.worker_count)
        self.running: dict[int, Task] = {}  # worker number -> task it runs
        self.stop_requested = Event()
        self.stop_now = Event()  # second signal: do not wait for running tasks
        self.stopping = False  # no more claims
        self.giving_up = False  # final writes: stop waiting for the database
        self.cancelling = False  # shutdown is killing the workers (GreenletExit)
        self.failed: str | None = None  # why a side job died, if one did
        self.fetcher = Fetcher(settings, self.holder, self.inflight, self.queue,
                               self.idle_workers, lambda: self.stopping)
        self.completer = Completer(settings, self.holder, self.inflight,
                                   lambda: self.giving_up, self.fetcher.wake.set)
        self.heartbeat = Heartbeat(settings, self.holder, self.inflight,
                                   lambda: self.giving_up)
        self.listener = Listener(settings, self.fetcher.wake, lambda: self.stopping)
        self.side_jobs: dict[str, gevent.Greenlet] = {}
        self.metrics = Metrics(self) if settings.metrics_port else None
        self.pruner = Pruner(settings, lambda: self.stopping) if settings.prune_after else None

    # --- running

    def run(self) -> int:
        """Process tasks until a signal; return the exit code."""
        s = self.settings
        log.info("Starting task processor with %d workers, fetching every %s",
                 s.worker_count, _seconds(s.fetch_interval))
        if self.metrics:
            self.metrics.serve()  # first: a port in use stops serve before any claim
        gevent.signal_handler(signal.SIGINT, self._on_signal)
        gevent.signal_handler(signal.SIGTERM, self._on_signal)
        self._start("completer", self.completer.run)
        self._start("heartbeat", self.heartbeat.run)
        if self.metrics:
            self._start("metrics", self.metrics.sample_forever)
        if s.listen:
            self._start("listener", self.listener.run)
        if self.pruner:
            self._start("pruner", self.pruner.run)
        for n in range(1, s.worker_count + 1):
            log.info("Starting worker %d", n)
            self.pool.spawn(self._worker, n)
        self._start("fetcher", self.fetcher.run)
        self.stop_requested.wait()
        self._shutdown()
        return 1 if self.failed else 0

    def idle_workers(self) -> int:
        return self.settings.worker_count - len(self.running)

    def _start(self, name: str, job: Callable[[], None]) -> None:
        self.side_jobs[name] = gevent.spawn(self._guard, name, job)

    def _guard(self, name: str, job: Callable[[], None]) -> None:
        """Run a side job; if it dies, say why in one line and stop the process."""
        try:
            job()
        except Stopped:
            pass
        except Exception as exc:
            self.failed = f"{name} failed: {type(exc).__name__}: {first_line(exc)}"
            log.error("%s; stopping", self.failed)
            self.stop_requested.set()

    def _on_signal(self) -> None:
        # Runs in its own greenlet: only set flags, the main greenlet does the work.
        if not self.stop_requested.is_set():
            log.info("Shutdown signal received, stopping task processor gracefully...")
            self.stop_requested.set()
        elif not self.stop_now.is_set():
            log.info("Second shutdown signal received, cancelling running tasks now")
            self.stop_now.set()

    # --- the worker loop

    def _worker(self, n: int) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                log.info("[Worker %d] Received shutdown signal", n)
                return
            if task.lost:
                self.inflight.discard(task.id)
                log.warning("[Worker %d] Task ID: %d lease lost before it started, skipped",
                            n, task.id)
                continue
            self.running[n] = task
            started = time.monotonic()
            try:
                outcome = self._execute(task, n)
            except gevent.GreenletExit as exc:
                if not self.cancelling:  # raised by the handler itself, not by shutdown
                    outcome = self._crashed(task, n, exc)
                else:
                    self.completer.put(Outcome(task, n, RELEASE))
                    log.info("[Worker %d] Task ID: %d cancelled by shutdown", n, task.id)
                    log.info("[Worker %d] Received shutdown signal", n)
                    raise
            except BaseException as exc:  # a bug outside the handler: keep the worker
                outcome = self._crashed(task, n, exc)
            finally:
                del self.running[n]
                self.fetcher.wake.set()
            if self.metrics:
                self.metrics.task_duration.observe(time.monotonic() - started)
            self.completer.put(outcome)

    def _crashed(self, task: Task, n: int, exc: BaseException) -> Outcome:
        outcome = self._failure(task, n, f"worker crashed: {type(exc).__name__}: {exc}")
        log.error("[Worker %d] crashed on task ID %d (%s: %s); worker restarted",
                  n, task.id, type(exc).__name__, exc)
        return outcome

    def _execute(self, task: Task, n: int) -> Outcome:
        """Run the handler on one task and say how it ended."""
        s = self.settings
        if log.isEnabledFor(logging.INFO):
            log.info("[Worker %d] Processing task ID: %d with payload: %s",
                     n, task.id, printable(task.payload),
                     extra={"task_id": task.id, "worker": n, "attempt": task.attempt})
        timer = gevent.Timeout(s.task_timeout or None, TaskTimeout)
        timer.start()
        try:
            if self.takes_task:
                ctx = TaskContext(task.id, task.attempt, n, s)
                result = self.handler(task.payload, task=ctx)
            else:
                result = self.handler(task.payload)
            problem = _unstorable(result)
            if problem:
                return self._failure(task, n, problem)
            return Outcome(task, n, DONE, result=result)
        except TaskTimeout:
            return self._failure(task, n, f"timed out after {_seconds(s.task_timeout)}")
        except (Exception, SystemExit) as exc:
            return self._failure(task, n, f"{type(exc).__name__}: {exc}")
        finally:
            timer.close()

    def _failure(self, task: Task, n: int, message: str) -> Outcome:
        """A failed run: retried after a backoff while retries remain, else error."""
        failures = task.attempt - task.rescues  # runs that ended in a failure, this one too
        if failures <= self.settings.max_retries:
            base = self.settings.retry_backoff * 2 ** (failures - 1)
            delay = min(base, RETRY_CAP) * random.uniform(0.8, 1.2)
            return Outcome(task, n, RETRY, error=message, delay=delay)
        log.info("[Worker %d] Task ID: %d failed: %s", n, task.id, message,
                 extra={"task_id": task.id, "worker": n, "attempt": task.attempt})
        return Outcome(task, n, ERROR, error=message)

    # --- shutdown

    def _shutdown(self) -> None:
        s = self.settings
        self.stopping = True
        self.fetcher.wake.set()
        fetcher = self.side_jobs["fetcher"]
        fetcher.join(timeout=s.statement_timeout + s.connect_timeout)
        fetcher.kill()
        if "listener" in self.side_jobs:
            self.side_jobs["listener"].kill()

        queued = []
        while not self.queue.empty():
            task = self.queue.get_nowait()
            if task is not None:
                queued.append(task)
                self.completer.put(Outcome(task, 0, RELEASE))
        if queued:
            log.info("Gave back %d queued tasks to pending", len(queued))
        for _ in range(s.worker_count):
            self.queue.put(None)

        deadline = time.monotonic() + s.shutdown_timeout
        while not self.pool.join(timeout=0.05):
            if self.stop_now.is_set() or time.monotonic() >= deadline:
                if self.running:
                    log.info("Cancelling %d running tasks and giving them back to pending",
                             len(self.running))
                self.cancelling = True
                self.pool.kill(block=True, timeout=5)
                break

        # Outcomes first, while leases are still kept alive; then the rest.
        self.completer.stop()
        completer = self.side_jobs["completer"]
        completer.join(timeout=GIVE_BACK_GRACE)
        if not completer.ready():
            self.giving_up = True
            completer.join(timeout=2)
            left = len(self.inflight)
            log.error("Could not write %d outcomes: database unreachable; those tasks "
                      "return to pending when their lease expires", left)
            completer.kill()
        else:
            self._release_leftovers()
        self.giving_up = True
        for job in self.side_jobs.values():
            job.kill()
        for link in (self.fetcher.link, self.heartbeat.link, self.completer.link):
            link.close()
        if self.pruner:
            self.pruner.link.close()
        if self.metrics:
            self.metrics.stop()
        log.info("All workers have completed, shutdown successful")


    def _release_leftovers(self) -> None:
        """Give back whatever the table still says this process holds: a claim
        whose reply never arrived (the fetcher cut off mid-statement, a connection
        lost with the reply). Every known task has had its outcome written."""
        try:
            with gevent.Timeout(GIVE_BACK_GRACE, TimeoutError("no answer from the database")):
                rows = self.completer.link.query(sql.release_orphans,
                                                 {"holder": self.holder, "known": []})
        except Exception as exc:  # the database went away just now: leases expire
            log.error("Could not check for tasks left claimed: %s", first_line(exc))
            return
        if rows:
            log.info("Gave back %d tasks claimed while shutting down: %s",
                     len(rows), ", ".join(str(r[0]) for r in sorted(rows)))


def _unstorable(result: object) -> str | None:
    """Why a handler's return value cannot be stored as a result, if it cannot."""
    if result is None:
        return None
    if not isinstance(result, str):
        return f"TypeError: handler returned {type(result).__name__}, expected str or None"
    if "\x00" in result:
        return "ValueError: result contains a NUL character, which PostgreSQL text cannot hold"
    try:
        result.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"UnicodeEncodeError: result is not valid text ({exc.reason})"
    return None


def _seconds(value: float) -> str:
    """5 -> '5s', 1.5 -> '1.5s', 0.5 -> '500ms', as Go prints durations."""
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"
