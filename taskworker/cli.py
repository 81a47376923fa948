"""The `taskworker` command: migrate, seed, serve.

Configuration comes from the environment and `.env` in the current folder (the
environment wins), and options override both. Every error a user can cause ends
in one line on stderr and a non-zero exit: 2 for bad configuration, 1 when the
database is unreachable or not migrated.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click
from dotenv import dotenv_values

from . import __version__, logs, migrate as migrations, sql
from .db import DatabaseUnavailable, connect
from .logs import log
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
    try:
        conn = connect(settings)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.table_exists)
            if not cur.fetchone()[0]:
                fail('table "tasks" does not exist: run "taskworker migrate" first',
                     EXIT_RUNTIME)
            cur.execute(sql.seed, {"count": count})
    finally:
        conn.close()
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
      TASK_MIN_SECONDS, TASK_MAX_SECONDS, TASK_FAILURE_RATE
                         the demo handler's sleep (1s to 4s) and failures (0.1)
    """
    from .handlers import HandlerError, load as load_handler
    from .worker import Processor, SchemaMissing, check_schema

    settings = load_settings({"WORKER_COUNT": workers, "FETCH_INTERVAL": fetch_interval,
                              "FETCH_LIMIT": fetch_limit, "TASK_HANDLER": handler})
    try:
        function, takes_task = load_handler(settings.task_handler)
    except HandlerError as exc:
        fail(str(exc), EXIT_CONFIG)
    log.info("Connecting to database: %s", settings.safe_database_url)
    try:
        check_schema(settings)
    except (DatabaseUnavailable, SchemaMissing) as exc:
        fail(str(exc), EXIT_RUNTIME)
    code = Processor(settings, function, takes_task).run()
    sys.exit(code)


def main() -> None:
    cli(prog_name="taskworker")
