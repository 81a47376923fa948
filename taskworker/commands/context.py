"""What every command runs in: its settings, its connection, and the one-line
errors and exit statuses a user sees.

Every error a user can cause ends in `Error: <one line>` on stderr and a non-zero
exit: EXIT_CONFIG for bad configuration or options, EXIT_RUNTIME when the database
is unreachable, not migrated or refuses a statement, EXIT_INTERRUPTED on Ctrl+C.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
import psycopg2
from dotenv import dotenv_values

from .. import logs
from ..settings import FIELDS, Settings, SettingsError, load, parse_duration
from ..store import migrations
from ..store.connection import DatabaseUnavailable, NoFreeSlot, connect
from ..store.database import PgConnection, first_line
from ..typos import misspelled

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    """`Error: message` on stderr (a JSON record with LOG_FORMAT=json), exit `code`."""
    click.echo(logs.error_line(message), err=True)
    sys.exit(code)


class CommandError(Exception):
    """Ends the command with `Error: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


# Settings an integration supplies beneath .env and the environment, as variables
# (the Django one's, from its settings: taskworker/django/conf.py).
defaults: dict[str, str] = {}


def dotenv() -> dict[str, str]:
    """The variables .env (current folder) sets."""
    return {k: v for k, v in dotenv_values(Path.cwd() / ".env").items() if v is not None}


def environment() -> dict[str, str]:
    """.env (current folder) with the environment over it (both over `defaults`)."""
    return {**defaults, **dotenv(), **os.environ}


def log_format(env: dict[str, str]) -> str:
    """LOG_FORMAT as `load` reads it, or plain when unset or invalid: the format of
    the one line that says `load` (or the command line) was refused."""
    raw = env.get("LOG_FORMAT", "")
    try:
        return str(FIELDS["LOG_FORMAT"][1](raw)) if raw.strip() else "plain"
    except ValueError:
        return "plain"


def load_settings(overrides: dict[str, str | None] | None = None) -> Settings:
    """Settings from .env (current folder), the environment (which wins), then
    `overrides` (the command's options); logging set up as they say. Refused
    settings end the command in one line, in JSON when LOG_FORMAT=json is valid."""
    env_file = dotenv()
    env = {**defaults, **env_file, **os.environ}
    try:
        settings = load(env, overrides or {})
    except SettingsError as exc:
        logs.setup(fmt=log_format(env))
        warn_misspelled(env_file)
        fail(str(exc), EXIT_CONFIG)
    logs.setup(settings.log_level, settings.log_format)
    warn_misspelled(env_file)
    return settings


def warn_misspelled(env_file: dict[str, str]) -> None:
    """A warning line for each variable that looks like a setting but is not one
    (`WORKER_CONT`: did you mean WORKER_COUNT?), stamped as a log line (a JSON
    record with LOG_FORMAT=json) and on stderr, as the `Error:` line: the stdout
    of enqueue, status... is data."""
    if logs.log.isEnabledFor(logging.WARNING):
        for line in misspelled(env_file, os.environ):
            click.echo(logs.format_line("warning", line, {}), err=True)


def duration(option: str, raw: str) -> float:
    """Seconds from an option's DURATION (30s, 5m, 2h, 7d); exit 2 when invalid."""
    try:
        return parse_duration(raw)
    except ValueError as exc:
        fail(f"invalid {option}={raw!r}: {exc}", EXIT_CONFIG)


def keyboard_interrupts() -> None:
    """Make Ctrl+C raise KeyboardInterrupt in the main greenlet, for the commands
    to end in their own way (`status --watch` exits 0, `enqueue -` says how far it
    got), instead of the entry module's immediate exit 130; and keep gevent's hub
    from printing the interrupt when it passes it on to the main greenlet."""
    import gevent

    signal.signal(signal.SIGINT, signal.default_int_handler)
    hub = gevent.get_hub()
    if KeyboardInterrupt not in hub.NOT_ERROR:
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def connect_waiting_for_a_slot(settings: Settings, name: str) -> PgConnection:
    """A connection, waited for (with backoff, saying so once) while the server
    has no connection slot free: a busy server is no reason for serve to exit."""
    import gevent

    delay = 0.5
    said = False
    while True:
        try:
            return connect(settings, name=name)
        except NoFreeSlot as exc:
            if not said:
                logs.log.warning("%s; waiting for a free connection slot", exc)
                said = True
            gevent.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextmanager
def checked_connection(settings: Settings, command: str, autocommit: bool = True,
                       wait_for_slot: bool = False) -> Iterator[PgConnection]:
    """A connection to a migrated database; any failure, when connecting, checking
    the schema or inside the block, ends the command in one line. With
    `wait_for_slot`, a server without a free connection slot is waited for."""
    name = f"taskworker {command}"
    try:
        if wait_for_slot:
            conn = connect_waiting_for_a_slot(settings, name)
        else:
            conn = connect(settings, autocommit=autocommit, name=name)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    try:
        migrations.check(conn)
        yield conn
    except migrations.SchemaMissing as exc:
        fail(str(exc), EXIT_RUNTIME)
    except CommandError as exc:
        fail(str(exc), exc.code)
    except psycopg2.Error as exc:  # e.g. a role that may connect but not read the tables
        fail(f"database error: {first_line(exc)}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    finally:
        conn.close()


@contextmanager
def database(settings: Settings, command: str, autocommit: bool = True,
             ) -> Iterator[PgConnection]:
    """What an admin command runs in: Ctrl+C as KeyboardInterrupt (see
    keyboard_interrupts), and a checked connection."""
    keyboard_interrupts()
    with checked_connection(settings, command, autocommit) as conn:
        yield conn
