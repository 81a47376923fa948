"""The systems of the rivals phase, each as a user would run it, behind one shape:
`enqueue(n)` empties its queue and puts n tasks in it, `start(env)` starts its
worker process (env: BENCH_SLEEP and BENCH_CLOCK_DIR, which its task reads),
`stop(proc)` stops it the way its documentation says to, `clean()` removes what
a run left (at the end of the phase).

  taskworker      `python -m taskworker serve`, WORKER_COUNT=C, FETCH_LIMIT unset,
                  TASK_HANDLER=benchmarks.iobound:timed_sleep, LOG_LEVEL=WARNING
  Celery          `celery -A benchmarks.celery_app worker -P gevent -c C` on
                  RabbitMQ or Redis, without a result backend or with Redis as it
  pgqueuer        one QueueManager, max_concurrent_tasks=C (benchmarks/pgqueuer_worker.py)
  procrastinate   App.run_worker_async(concurrency=C), psycopg connector
                  (benchmarks/procrastinate_app.py)

Every task body is the same: a cooperative sleep, its start and end recorded by
benchmarks/task_clock.py. The harness never imports Celery, procrastinate or
pgqueuer itself: each runs in children started with this interpreter.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from urllib.parse import urlsplit

from . import pgqueuer_runs
from . import taskworker_runs as tw
from .databases import connect
from .processes import BenchError, Proc, run, workdir

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HANDLER = "benchmarks.iobound:timed_sleep"


def installed(*dists: str) -> str | None:
    """None when every distribution is installed, else what is missing."""
    missing = []
    for dist in dists:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return f"not installed: {', '.join(missing)} (tox -e bench installs them)" if missing else None


def reachable(url: str) -> str | None:
    """None when something listens at the URL's host and port, else why not."""
    parts = urlsplit(url)
    port = parts.port or {"amqp": 5672, "redis": 6379}.get(parts.scheme, 0)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=3).close()
    except OSError as exc:
        return f"{parts.scheme} server at {parts.hostname}:{port} not reachable ({exc})"
    return None


def _sql(url: str, *statements: str, args: tuple = ()) -> None:
    """Run statements on the harness's own connection (autocommit)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, args if "%s" in statement else None)
    finally:
        conn.close()


def _check(name: str, args: list[str], env: Mapping[str, str], timeout: float = 300) -> None:
    code, out = run(name, args, env, cwd=workdir("cwd"), timeout=timeout)
    if code != 0:
        raise BenchError(f"{' '.join(args[2:4])} exited {code}: {out.strip()[-500:]}")


@dataclass
class System:
    name: str
    concurrency: int
    stop_signal: int = signal.SIGINT
    # Makes (once) the database of a system that keeps its queue in PostgreSQL.
    database: Callable[[], str] | None = None
    url: str = ""

    def unavailable(self) -> str | None:
        return None

    def prepare(self) -> None:
        """Once, before the first run: the database (and schema) it needs."""
        if self.database is not None:
            self.url = self.database()

    def enqueue(self, n: int) -> None:
        raise NotImplementedError

    def start(self, extra: Mapping[str, str]) -> Proc:
        raise NotImplementedError

    def stop(self, proc: Proc) -> int:
        return proc.stop(self.stop_signal, 30)

    def clean(self) -> None:
        """What the last run left, at the end of the phase."""


@dataclass
class Taskworker(System):
    def enqueue(self, n: int) -> None:
        _sql(self.url, "TRUNCATE tasks", tw.INSERT_PENDING, "ANALYZE tasks", args=(n,))

    def start(self, extra: Mapping[str, str]) -> Proc:
        return tw.start_serve(self.url, self.concurrency, None,
                              handler=HANDLER, **extra)

    def clean(self) -> None:
        self.enqueue(0)


@dataclass
class Celery(System):
    broker: str = ""
    backend: str | None = None
    prefix: str = "twbench_"
    stop_signal: int = signal.SIGTERM  # warm shutdown

    def unavailable(self) -> str | None:
        return (installed("celery", "gevent", "redis") or reachable(self.broker)
                or (reachable(self.backend) if self.backend else None))

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = tw.env_for("", bench_broker=self.broker, bench_backend=self.backend or "",
                         bench_prefix=self.prefix)
        env.update(extra or {})
        return env

    def enqueue(self, n: int) -> None:
        self.clean()
        _check("celery-enqueue", [sys.executable, "-m", "benchmarks.celery_app", "enqueue",
                                  str(n)], self._env())

    def start(self, extra: Mapping[str, str]) -> Proc:
        return Proc("celery", [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app",
                               "worker", "-P", "gevent", "-c", str(self.concurrency)],
                    self._env(extra), cwd=workdir("cwd"))

    def clean(self) -> None:
        _check("celery-clean", [sys.executable, "-m", "benchmarks.celery_app", "clean"],
               self._env(), timeout=60)


@dataclass
class Pgqueuer(System):
    def unavailable(self) -> str | None:
        return None if pgqueuer_runs.version() else installed("pgqueuer", "asyncpg")

    def enqueue(self, n: int) -> None:
        self.clean()
        _check("pgqueuer-enqueue", pgqueuer_runs.WORKER + ["enqueue-sleep", self.url, str(n)],
               tw.env_for(""))
        _sql(self.url, "ANALYZE pgqueuer")

    def start(self, extra: Mapping[str, str]) -> Proc:
        env = tw.env_for("")
        env.update(extra)
        return Proc("pgqueuer", pgqueuer_runs.WORKER + ["sleep", self.url,
                                                        str(self.concurrency)],
                    env, cwd=workdir("cwd"))

    def clean(self) -> None:
        _sql(self.url, "TRUNCATE pgqueuer, pgqueuer_log")


PROCRASTINATE = [sys.executable, "-m", "benchmarks.procrastinate_app"]


@dataclass
class Procrastinate(System):
    def unavailable(self) -> str | None:
        return installed("procrastinate", "psycopg")

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = tw.env_for("", bench_dsn=self.url)
        env.update(extra or {})
        return env

    def prepare(self) -> None:
        super().prepare()
        _check("procrastinate-install", PROCRASTINATE + ["install"], self._env(), 60)

    def enqueue(self, n: int) -> None:
        self.clean()
        _check("procrastinate-enqueue", PROCRASTINATE + ["enqueue", str(n)], self._env())
        _sql(self.url, "ANALYZE procrastinate_jobs")

    def start(self, extra: Mapping[str, str]) -> Proc:
        return Proc("procrastinate", PROCRASTINATE + ["worker", str(self.concurrency)],
                    self._env(extra), cwd=workdir("cwd"))

    def clean(self) -> None:
        _sql(self.url, "TRUNCATE procrastinate_jobs CASCADE")
