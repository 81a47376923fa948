"""`taskworker serve`: process tasks until Ctrl+C or SIGTERM.

The processor's side (taskworker.processor, taskworker.web) is imported inside the
command, so that the other commands neither load it nor depend on it.
"""
from __future__ import annotations

import dataclasses
import sys

import click

from ..logs import log, seconds
from ..settings import DEFAULT_DASHBOARD_PORT, DEMO_HANDLER, Settings
from .context import EXIT_CONFIG, EXIT_RUNTIME, checked_connection, fail, load_settings


@click.command()
@click.option("--workers", "-w", metavar="N",
              help="Worker greenlets processing tasks in parallel, at most 100,000. "
                   "[env WORKER_COUNT; default 5]")
@click.option("--fetch-interval", "-i", metavar="DURATION",
              help="How often to look for tasks when idle: 5, 5s, 1.5, 500ms. "
                   "[env FETCH_INTERVAL; default 5s]")
@click.option("--fetch-limit", "-l", metavar="N",
              help="Most tasks claimed in one statement. [env FETCH_LIMIT; default: "
                   "sized per claim from the idle workers and the task rate, at most 1000]")
@click.option("--handler", metavar="MODULE:FUNCTION",
              help="The function run for each task without a name. "
                   "[env TASK_HANDLER; default taskworker.handlers:demo, "
                   "none when TASK_MODULES is set]")
@click.option("--tasks", "-t", "modules", metavar="MODULE[,MODULE]",
              help="Modules that register named tasks (@taskworker.task). [env TASK_MODULES]")
@click.option("--queues", "-q", metavar="QUEUE[:N][,QUEUE[:N]]",
              help="Serve only these queues; QUEUE:N runs at most N of that queue's "
                   "tasks at once here. [env QUEUES; default every queue]")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also serve the web dashboard in this process (on DASHBOARD_PORT, "
                   "default 8080; DASHBOARD_PORT set alone does the same).")
def serve(workers: str | None, fetch_interval: str | None, fetch_limit: str | None,
          handler: str | None, modules: str | None, queues: str | None,
          with_dashboard: bool) -> None:
    """Process tasks until Ctrl+C (SIGINT) or SIGTERM.

    \b
    Also read from the environment or .env:
      LEASE_SECONDS      lease of a claimed task, renewed every third (30)
      MAX_RETRIES        retries of a failed task before it ends in error (0)
      RETRY_BACKOFF      base of the exponential retry delay (5s)
      MAX_RESCUES        times a task may lose its worker before it is parked (3)
      TASK_TIMEOUT       longest a task may run, 0 = no limit (300s)
      SHUTDOWN_TIMEOUT   time running tasks get to finish on Ctrl+C (30s)
      STATEMENT_TIMEOUT  server-side limit on each query (10s)
      CONNECT_TIMEOUT    limit on one connection attempt (10s)
      CRON_TZ            time zone of periodic tasks' cron expressions (UTC)
      LISTEN             wake on LISTEN/NOTIFY; false behind PgBouncer (true)
      LISTEN_DATABASE_URL  a direct connection for LISTEN alone (DATABASE_URL)
      METRICS_PORT       serve Prometheus /metrics and /healthz on this port (off)
      METRICS_HOST       address the metrics server listens on (127.0.0.1)
      HEALTH_MAX_DOWNTIME  /healthz fails once a connection is down this long (30s)
      PRUNE_AFTER        delete done/error/cancelled tasks older than this (off)
      MAX_PAYLOAD_BYTES  largest payload or result, larger ones fail the task (1MB)
      TRANSACTION_POOL_SIZE  connections for tasks' bound transactions (10)
      DASHBOARD_PORT     serve the dashboard on this port too (off; see
                         `taskworker dashboard --help` for its settings)
      TASK_MIN_SECONDS, TASK_MAX_SECONDS, TASK_FAILURE_RATE
                         the demo handler's sleep (1s to 4s) and failures (0.1)
    """
    from ..handlers import HandlerError
    from ..handlers import load as load_handler
    from ..registry import RegistryError, import_modules, registered

    settings = load_settings({"WORKER_COUNT": workers, "FETCH_INTERVAL": fetch_interval,
                              "FETCH_LIMIT": fetch_limit, "TASK_HANDLER": handler,
                              "TASK_MODULES": modules, "QUEUES": queues})
    if with_dashboard and settings.dashboard_port is None:
        settings = dataclasses.replace(settings, dashboard_port=DEFAULT_DASHBOARD_PORT)
    if settings.dashboard_port is not None:
        from ..dashboard.security import refusal

        why = refusal(settings, settings.dashboard_host)
        if why:
            fail(why, EXIT_CONFIG)
    try:
        import_modules(settings.task_modules)
        default = load_handler(settings.default_handler) if settings.default_handler else None
    except (HandlerError, RegistryError) as exc:
        fail(str(exc), EXIT_CONFIG)
    definitions = registered()
    if settings.task_modules and not definitions and default is None:
        fail(f"TASK_MODULES={','.join(settings.task_modules)} registers no task "
             "(@taskworker.task) and TASK_HANDLER is not set: nothing to run", EXIT_CONFIG)
    if definitions:
        log.info("Serving tasks: %s%s; queues: %s", ", ".join(sorted(definitions)),
                 " and tasks without a name" if default else "",
                 ", ".join(settings.queue_names) if settings.queue_names else "all")
    log.info("Connecting to database: %s", settings.safe_database_url)
    # Refuse to start on a database that is unreachable, not migrated, or not
    # readable by this role: one line, exit 1. (One with no connection slot free
    # is waited for.)
    with checked_connection(settings, "check", wait_for_slot=True):
        pass
    log.info("%s", without_a_name(settings))

    from ..dashboard.app import DashboardError
    from ..processor.processor import Processor
    from ..web.server import MetricsError

    try:
        code = Processor(settings, default, definitions).run()
    except (MetricsError, DashboardError) as exc:
        fail(str(exc), EXIT_RUNTIME)
    sys.exit(code)


def without_a_name(settings: Settings) -> str:
    """What runs the tasks without a task name, said at start: a real task run by
    the demo by mistake (a TASK_HANDLER misspelled) is stored `done`, its payload
    reversed."""
    handler = settings.default_handler
    if handler == DEMO_HANDLER:
        s = settings
        sleeps = (f"sleeps {seconds(s.task_min_seconds)} to {seconds(s.task_max_seconds)}, "
                  if s.task_max_seconds else "")
        return (f"Tasks without a name run with the demo handler {handler}: it {sleeps}"
                f"returns the payload reversed and fails {s.task_failure_rate * 100:g}% of "
                "tasks (TASK_HANDLER names your own)")
    if handler:
        return f"Tasks without a name run with the default handler {handler}"
    return ("Tasks without a name are left pending for another process: TASK_MODULES is set "
            "and TASK_HANDLER is not")
