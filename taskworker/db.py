"""Connections: opening them safely, and keeping one alive across outages.

Each `Link` is one psycopg2 connection used by one greenlet. A lost connection
(server restart, network cut, idle-session kill) is closed, re-opened with capped
exponential backoff, and the statement sent again; a statement the server
refuses for another reason is raised to the caller.
"""
from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from .logs import log
from .settings import Settings

# Errors that mean "the connection, not the statement, is the problem".
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
# Errors after which the same statement, sent again, can succeed.
TRANSIENT_ERRORS = (psycopg2.errors.QueryCanceled, psycopg2.errors.TransactionRollbackError)
RECENT_LOSSES = 5  # times of the last losses each connection keeps (/healthz: flapping)


class DatabaseUnavailable(Exception):
    """The database could not be reached; str() is one line for the user."""


class ConnectTimeout(Exception):
    """One connection attempt took longer than CONNECT_TIMEOUT."""


class Stopped(Exception):
    """A Link gave up retrying because its owner is stopping."""


def connect(settings: Settings, *, autocommit: bool = True, name: str = "taskworker",
            statement_timeout: float | None = None) -> psycopg2.extensions.connection:
    """Open one connection, bounded by CONNECT_TIMEOUT.

    libpq's own connect_timeout is not honoured once psycogreen makes connections
    asynchronous, so the bound is a gevent.Timeout. TCP keepalives make a dead peer
    show up as an error instead of a query that waits for ever.
    """
    timeout = settings.statement_timeout if statement_timeout is None else statement_timeout
    options = f"-c statement_timeout={int(timeout * 1000)}"
    try:
        with gevent.Timeout(settings.connect_timeout, ConnectTimeout):
            conn = psycopg2.connect(
                settings.database_url,
                application_name=name,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                options=options,
            )
    except ConnectTimeout:
        raise DatabaseUnavailable(
            f"cannot connect to database {settings.safe_database_url}: "
            f"no answer within {settings.connect_timeout:g}s"
        ) from None
    except psycopg2.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to database {settings.safe_database_url}: {first_line(exc)}"
        ) from None
    conn.autocommit = autocommit
    return conn


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error message (libpq's are multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class Link:
    """One connection for one greenlet, re-opened whenever it breaks.

    `should_stop` is asked between retries; when it answers True the Link raises
    `Stopped` instead of waiting for the database any longer.
    """

    def __init__(self, settings: Settings, name: str,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.name = name
        self.should_stop = should_stop
        self.on_reconnect = on_reconnect
        self.conn: psycopg2.extensions.connection | None = None
        self.down_since: float | None = None  # monotonic time of the first failure
        # Like down_since, but cleared only by a statement that succeeds, not by a
        # connect: a connection killed again and again right after opening stays
        # failing (read by /healthz).
        self.failing_since: float | None = None
        self.losses: deque[float] = deque(maxlen=RECENT_LOSSES)  # when it was lost
        self.reconnects = 0

    def connection(self) -> psycopg2.extensions.connection:
        """The live connection, opened (with retries) if needed."""
        delay = 0.1
        while self.conn is None or self.conn.closed:
            try:
                self.conn = connect(self.settings, name=f"taskworker {self.name}")
            except DatabaseUnavailable as exc:
                self._broken(exc)
                self._pause(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.down_since is not None:
                self.down_since = None
                self.reconnects += 1
                log.info("Reconnected to database (%s)", self.name)
                if self.on_reconnect:
                    self.on_reconnect()
        return self.conn

    def query(self, statement: str, params: dict[str, Any] | Sequence[Any] | None = None,
              ) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows.

        On a lost connection the statement is sent again on a new one, so it must
        be safe to repeat (all of taskworker's are: they are fenced or idempotent).
        """
        delay = 0.1
        while True:
            conn = self.connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(statement, params)
                    rows = cur.fetchall() if cur.description is not None else []
                self.failing_since = None
                return rows
            except CONNECTION_ERRORS as exc:
                if conn.closed:
                    self._broken(exc)
                    self.close()
                elif isinstance(exc, TRANSIENT_ERRORS):
                    # The server rolled the statement back whole (a deadlock with
                    # another of our statements, statement_timeout): send it again.
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                    log.warning("Statement interrupted (%s): %s; retrying",
                                self.name, first_line(exc))
                else:
                    raise
                self._pause(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def _broken(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.losses.append(self.down_since)
            log.warning("Database connection lost (%s): %s; reconnecting",
                        self.name, first_line(exc))

    def _pause(self, delay: float) -> None:
        if self.should_stop():
            raise Stopped(self.name)
        gevent.sleep(delay * random.uniform(0.5, 1.0))
        if self.should_stop():
            raise Stopped(self.name)
