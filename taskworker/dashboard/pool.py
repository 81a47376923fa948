"""The dashboard's own connections: a few, each used by one greenlet at a time.

A request takes an idle connection (or opens one), runs its statements and puts
it back. Text searches take at most SEARCHES of the SIZE connections: on a table
that keeps months of history a rare word can take seconds to find (part 19: 10
million finished rows), and searches holding every connection made every other
page, the overview included, wait seconds behind them.

A database that goes away makes the request fail with `Unavailable` (the app
answers 503 with a line that names nothing of the connection); the outage is
logged once, with what the driver said, and its end once, and the next request
simply opens a new connection.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import psycopg2
from gevent.lock import BoundedSemaphore
from gevent.monkey import get_original

from ..logs import log
from ..settings import Settings
from ..store.connection import DatabaseUnavailable, client_deadline, connect
from ..store.database import Direct, PgConnection, first_line

_select = get_original("select", "select")
SIZE = 8  # connections at most; more requests at once wait for one
SEARCHES = 2  # of them, at most this many for text searches at once
# The side tables of search are rarely analyzed (autovacuum may be off or behind):
# their estimates then price a 1 ms statement past jit_above_cost, and compiling
# it took 135 ms (measured on 1,000,000 tasks); and past the parallel thresholds,
# so that each search started two parallel workers to read a handful of rows. No
# dashboard statement gains from either: the dashboard is a background guest of
# the database the workers need.
LOCAL_SETTINGS = "SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0; "


class Unavailable(Exception):
    """The database cannot answer now; str() is one line for the page, which names
    nothing of the connection (a driver's message may quote its URL, host, port,
    user or database: the pool logs it, no page shows it)."""


class Pool:
    def __init__(self, settings: Settings, size: int = SIZE, searches: int = SEARCHES) -> None:
        self.settings = settings
        self.deadline = client_deadline(settings)
        self._slots = BoundedSemaphore(size)
        self._searches = BoundedSemaphore(searches)
        self._idle: list[PgConnection] = []
        self._down: str | None = None  # the outage being reported, if any

    @contextmanager
    def connection(self, search: bool = False) -> Iterator[Direct]:
        """A connection for the block; Unavailable when the database fails it.
        With `search` (a text search), first one of the SEARCHES turns, waited for
        as long as a statement may take: then Unavailable, the database untouched."""
        if not search:
            with self._connection() as db:
                yield db
            return
        if not self._searches.acquire(timeout=self.deadline):
            raise Unavailable("other text searches are still running: try again in a moment")
        try:
            with self._connection() as db:
                yield db
        finally:
            self._searches.release()

    @contextmanager
    def _connection(self) -> Iterator[Direct]:
        with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is not None and _dropped(conn):
                conn.close()
            try:
                if conn is None or conn.closed:
                    conn = connect(self.settings, name="taskworker dashboard")
                    conn.local_settings = LOCAL_SETTINGS
                with gevent.Timeout(self.deadline, Unavailable(
                        f"no answer from the database within {self.deadline:g}s")):
                    yield Direct(conn)
            except (DatabaseUnavailable, Unavailable, psycopg2.Error) as exc:
                if conn is not None and not (isinstance(exc, psycopg2.Error)
                                             and not conn.closed and _statement_error(exc)):
                    conn.close()
                    conn = None
                raise self._failed(exc) from None
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if conn is not None and not conn.closed:
                self._idle.append(conn)
            if self._down is not None:
                log.info("Dashboard: the database answers again")
                self._down = None

    def _failed(self, exc: BaseException) -> Unavailable:
        if isinstance(exc, Unavailable):  # the deadline
            what, shown = str(exc), str(exc)
        elif isinstance(exc, DatabaseUnavailable):
            what, shown = str(exc), "cannot connect to the database"
        else:
            what = f"database error: {first_line(exc)}"
            shown = ("the database refused a statement"
                     if isinstance(exc, psycopg2.Error) and _statement_error(exc)
                     else "the connection to the database failed")
        if self._down is None:
            log.warning("Dashboard: %s", what)
        self._down = what
        return Unavailable(f"{shown} (the dashboard's log says more)")

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _dropped(conn: PgConnection) -> bool:
    """Has the server ended this idle connection (a restart, an idle timeout, a
    terminated backend)? An idle connection has nothing to read unless the server
    said goodbye or closed it; a stale one is replaced, not reported as an outage."""
    try:  # the unpatched select: gevent's, with no timeout, may answer before it polls
        readable, _, _ = _select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg2.Error):
        return True
    return bool(readable)


def _statement_error(exc: psycopg2.Error) -> bool:
    """An error of the statement, not of the connection (which stays usable)."""
    return not isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
