"""The `taskworker` command: migrate, seed, serve; enqueue, status, show, retry,
cancel, prune (their bodies are in admin.py).

Configuration comes from the environment and `.env` in the current folder (the
environment wins), and options override both. Every error a user can cause ends
in one line on stderr and a non-zero exit: 2 for bad configuration, 1 when the
database is unreachable or not migrated.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import psycopg2
from dotenv import dotenv_values

from . import __version__, admin, logs
from .store import sql
from . import migrate as migrations
from .db import DatabaseUnavailable, connect, first_line
from .logs import log
from .pruner import FINISHED, PRUNE_BATCH
from .settings import Settings, SettingsError, load

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def load_settings(overrides: dict[str, str | None] | None = None) -> Settings:
    """Settings from .env (current folder), the environment, then `overrides`."""
    env: dict[str, str] = {k: v for k, v in dotenv_values(Path.cwd() / ".env").items()
                           if v is not None}
    env.update(os.environ)
    try:
        settings = load(env, overrides or {})
    except SettingsError as exc:
        fail(str(exc), EXIT_CONFIG)
    logs.setup(settings.log_level, settings.log_format)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskworker")
def cli() -> None:
    """taskworker: a PostgreSQL-backed task processor on gevent.

    \b
    Configuration (environment or .env in the current folder):
      DATABASE_URL   PostgreSQL connection string
                     (default postgres://postgres@localhost:5432/taskprocessor?sslmode=disable)
      LOG_LEVEL      DEBUG, INFO, WARNING or ERROR (default INFO)
      LOG_FORMAT     plain or json (default plain)
    See `taskworker serve --help` for the processor's settings.
    """


@cli.command()
def migrate() -> None:
    """Create or update the tasks table (safe to run again, or twice at once)."""
    settings = load_settings()
    log.info("Connecting to database: %s", settings.safe_database_url)
    log.info("Running database migration...")
    try:
        migrations.run(settings)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    except Exception as exc:  # a migration the server refused
        fail(f"migration failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
             EXIT_RUNTIME)
    log.info("Migration completed successfully")


@cli.command()
@click.option("--count", "-n", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many sample tasks to insert.")
def seed(count: int) -> None:
    """Insert sample pending tasks "Test task 1" ... "Test task N"."""
    settings = load_settings()
    log.info("Connecting to database: %s", settings.safe_database_url)
    with database(settings, "seed") as conn, conn.cursor() as cur:
        cur.execute(sql.seed, {"count": count})
    log.info("Inserted %d pending tasks", count)


@cli.command()
@click.option("--workers", "-w", metavar="N",
              help="Worker greenlets processing tasks in parallel. [env WORKER_COUNT; default 5]")
@click.option("--fetch-interval", "-i", metavar="DURATION",
              help="How often to look for tasks when idle: 5, 5s, 1.5, 500ms. "
                   "[env FETCH_INTERVAL; default 5s]")
@click.option("--fetch-limit", "-l", metavar="N",
              help="Most tasks claimed in one statement. [env FETCH_LIMIT; default 10]")
@click.option("--handler", metavar="MODULE:FUNCTION",
              help="The function run for each task. "
                   "[env TASK_HANDLER; default taskworker.handlers:demo]")
def serve(workers: str | None, fetch_interval: str | None, fetch_limit: str | None,
          handler: str | None) -> None:
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
      LISTEN             wake on LISTEN/NOTIFY; false for PgBouncer (true)
      METRICS_PORT       serve Prometheus /metrics and /healthz on this port (off)
      METRICS_HOST       address the metrics server listens on (127.0.0.1)
      HEALTH_MAX_DOWNTIME  /healthz fails once a connection is down this long (30s)
      PRUNE_AFTER        delete done/error/cancelled tasks older than this (off)
      TASK_MIN_SECONDS, TASK_MAX_SECONDS, TASK_FAILURE_RATE
                         the demo handler's sleep (1s to 4s) and failures (0.1)
    """
    from .handlers import HandlerError
    from .handlers import load as load_handler
    from .metrics import MetricsError
    from .worker import Processor

    settings = load_settings({"WORKER_COUNT": workers, "FETCH_INTERVAL": fetch_interval,
                              "FETCH_LIMIT": fetch_limit, "TASK_HANDLER": handler})
    try:
        function, takes_task = load_handler(settings.task_handler)
    except HandlerError as exc:
        fail(str(exc), EXIT_CONFIG)
    log.info("Connecting to database: %s", settings.safe_database_url)
    try:  # refuse to start on a database that is unreachable or not migrated
        with closing(connect(settings, name="taskworker check")) as conn:
            migrations.check(conn)
    except (DatabaseUnavailable, migrations.SchemaMissing) as exc:
        fail(str(exc), EXIT_RUNTIME)
    try:
        code = Processor(settings, function, takes_task).run()
    except MetricsError as exc:
        fail(str(exc), EXIT_RUNTIME)
    sys.exit(code)

# --- feeding, inspecting and steering the queue: declarations here, bodies in admin.py

T = TypeVar("T")


def checked(function: Callable[..., T], *args: Any) -> T:
    """function(*args), with an admin.CommandError ending the command in one line."""
    try:
        return function(*args)
    except admin.CommandError as exc:
        fail(str(exc), exc.code)


@contextmanager
def database(settings: Settings, command: str, autocommit: bool = True,
             ) -> Iterator[psycopg2.extensions.connection]:
    """A connection to a migrated database; any failure inside ends in one line."""
    admin.keyboard_interrupts()
    try:
        conn = connect(settings, autocommit=autocommit, name=f"taskworker {command}")
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    try:
        migrations.check(conn)
        yield conn
    except migrations.SchemaMissing as exc:
        fail(str(exc), EXIT_RUNTIME)
    except admin.CommandError as exc:
        fail(str(exc), exc.code)
    except psycopg2.Error as exc:
        fail(f"database error: {first_line(exc)}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    finally:
        conn.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")


@cli.command()
@click.argument("payloads", nargs=-1, required=True, metavar="PAYLOAD...")
@click.option("--run-at", metavar="TIME",
              help="Due at TIME, ISO 8601: 2030-01-31T08:00 (local time) or with an offset.")
@click.option("--delay", metavar="DURATION", help="Due DURATION from now: 30s, 10m, 2h, 1d.")
@click.option("--batch-size", default=admin.ENQUEUE_BATCH, show_default=True,
              type=click.IntRange(min=1), help="Rows per INSERT (and per commit for -).")
def enqueue(payloads: tuple[str, ...], run_at: str | None, delay: str | None,
            batch_size: int) -> None:
    """Add one pending task per PAYLOAD; print their ids, one per line.

    Several PAYLOADs are inserted in one transaction. `taskworker enqueue -`
    reads one payload per line from stdin (UTF-8; blank lines skipped) and
    commits every --batch-size lines, printing the ids as they are committed; a
    progress bar shows on stderr when it is a terminal and stdout is not.

    \b
      taskworker enqueue "resize photo 1" "resize photo 2"
      taskworker enqueue --delay 10m "send the reminder"
      taskworker enqueue - < payloads.txt > ids.txt
    """
    settings = load_settings()
    when = checked(admin.schedule, run_at, delay)
    with database(settings, "enqueue", autocommit=False) as conn:
        admin.enqueue(conn, payloads, when, batch_size)


@cli.command()
@json_option
@click.option("--watch", "-w", metavar="[SECONDS]", is_flag=False, flag_value="2",
              help="Refresh every SECONDS (2 if not given) until Ctrl+C.")
def status(as_json: bool, watch: str | None) -> None:
    """Show the queue at a glance.

    \b
    STATUS   tasks in each status; "scheduled for later": pending tasks not
             due yet (waiting out a retry backoff, or enqueued with --delay)
    oldest due task waiting
             time since the run_at of the oldest pending task that is due
    rescued in the last hour
             tasks rescued at least once (their process stopped renewing the
             lease) whose row changed in the last hour (the schema keeps no
             rescue times: a good estimate, not an exact count)
    pending retries
             pending tasks with attempts > 0: they failed or lost their worker
             and wait to run again (a count now, not over the last hour)
    HOLDER   running tasks per process (locked_by = host:pid:random) and the
             time left on its soonest lease ("expired": it stopped renewing)
    ERRORS   the 5 most frequent error texts among tasks in error
    """
    interval = None if watch is None else checked(admin.duration, "--watch", watch)
    if interval is not None and interval <= 0:
        fail(f"invalid --watch={watch!r}: must be greater than 0", EXIT_CONFIG)
    settings = load_settings()
    with database(settings, "status") as conn:
        if interval is None:
            admin.status(conn, as_json)
        else:
            admin.watch(conn, lambda: connect(settings, name="taskworker status"), interval,
                        as_json)


@cli.command()
@click.argument("task_id", metavar="ID", type=int)
@json_option
def show(task_id: int, as_json: bool) -> None:
    """Print one task, every column."""
    with database(load_settings(), "show") as conn:
        admin.show(conn, task_id, as_json)


@cli.command()
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all-errors", is_flag=True, help="Every task in error instead of IDs.")
@click.option("--since", metavar="DURATION",
              help="With --all-errors: only tasks that ended within DURATION (1h, 2d).")
def retry(ids: tuple[int, ...], all_errors: bool, since: str | None) -> None:
    """Put tasks in error back to pending, due now; print how many.

    A retried task starts over as if new: attempts and rescues go back to 0, so
    it gets the whole MAX_RETRIES and MAX_RESCUES budget again (a task parked as
    "abandoned" runs again too). Its error column keeps the last error. Exit
    status 1 when a named ID was not retried, with one line for each.
    """
    if bool(ids) == all_errors:
        fail("give task IDs or --all-errors (not both)", EXIT_CONFIG)
    if since is not None and not all_errors:
        fail("--since goes with --all-errors", EXIT_CONFIG)
    seconds = None if since is None else checked(admin.duration, "--since", since)
    with database(load_settings(), "retry") as conn:
        code = admin.retry(conn, ids or None, seconds)
    sys.exit(code)


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True, metavar="ID...")
def cancel(ids: tuple[int, ...]) -> None:
    """Cancel pending tasks (status cancelled: no worker will run them).

    Running tasks cannot be cancelled cleanly yet: they are left alone. Exit
    status 0 when every ID was cancelled, else 1 with one line per ID that was not.
    """
    with database(load_settings(), "cancel") as conn:
        code = admin.cancel(conn, ids)
    sys.exit(code)


@cli.command()
@click.option("--older-than", required=True, metavar="DURATION",
              help="Delete tasks last changed (updated_at) more than DURATION ago: 7d, 12h.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(FINISHED),
              help="Only this status (repeatable). [default: done, error and cancelled]")
@click.option("--batch-size", default=PRUNE_BATCH, show_default=True,
              type=click.IntRange(min=1), help="Rows per DELETE statement.")
def prune(older_than: str, statuses: tuple[str, ...], batch_size: int) -> None:
    """Delete finished tasks; print how many.

    Pending and running tasks are never deleted. Each batch is its own short
    transaction, so workers and producers are not held up while it runs.

    \b
      taskworker prune --older-than 7d
      taskworker prune --older-than 1d --status done
    """
    seconds = checked(admin.duration, "--older-than", older_than)
    with database(load_settings(), "prune") as conn:
        admin.prune(conn, seconds, statuses or FINISHED, batch_size)


def main() -> None:
    cli(prog_name="taskworker")
