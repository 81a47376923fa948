"""The `taskworker` command: migrate, seed, serve; enqueue, status, show, retry,
cancel, prune; pause, resume; dashboard. One module per family of commands;
context.py is what they all run in (settings, a checked connection, one-line
errors and exit statuses).

Configuration comes from the environment and `.env` in the current folder (the
environment wins), and options override both. Every error a user can cause ends
in one line on stderr and a non-zero exit: 2 for bad configuration, 1 when the
database is unreachable or not migrated.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .. import __version__, logs
from . import dashboard, enqueue, prune, queues, schedule, schema, serve, status, tasks
from .context import environment, log_format

# Asking for no command shows the help, as an error (click 8.2 and later).
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextmanager
def _usage_errors_in_log_format() -> Iterator[None]:
    """A command line click refuses (an unknown option, a bad value) ends in its
    usage and `Error: ...`; with LOG_FORMAT=json, in one JSON record instead, as
    every other line the process writes."""
    try:
        yield
    except click.ClickException as exc:
        if not isinstance(exc, _HELP) and log_format(environment()) == "json":
            line = logs.error_line(exc.format_message(), "json")
            exc.show = lambda file=None: click.echo(line, err=True)  # type: ignore[method-assign]
        raise


class Cli(click.Group):
    """The command group; its usage errors follow LOG_FORMAT."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _usage_errors_in_log_format():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_in_log_format():
            return super().invoke(ctx)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskworker")
def cli() -> None:
    """taskworker: a PostgreSQL-backed task processor on gevent.

    \b
    Configuration (environment or .env in the current folder):
      DATABASE_URL   PostgreSQL connection string
                     (default postgres://postgres@127.0.0.1:5432/taskprocessor?sslmode=disable)
      LOG_LEVEL      DEBUG, INFO, WARNING or ERROR (default INFO)
      LOG_FORMAT     plain or json (default plain)
    See `taskworker serve --help` for the processor's settings.
    """


for command in (schema.migrate, schema.seed, serve.serve, enqueue.enqueue, status.status,
                tasks.show, tasks.retry, tasks.cancel, prune.prune, schedule.schedule,
                queues.pause, queues.resume, dashboard.dashboard):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="taskworker")
