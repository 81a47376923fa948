"""Connections: opening one safely, and keeping one alive across outages.

`connect` bounds one attempt in time; `ReconnectingConnection` is the connection
each of serve's services owns, which re-opens itself and sends the statement
again after an outage. It is a `Database` (database.py), so the typed functions
of the store take it as they take a caller's own connection. Its `Gate` says when
it may open: a serve process makes its connections wait while it steps back for
want of connection slots (processor/shortage.py).
"""
from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.lock
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from ..logs import log
from ..settings import Settings, mask_password, mask_secrets
from . import prepared
from .database import Params, PgConnection, Row, execute, first_line

# Errors that mean "the connection, not the statement, is the problem".
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
# Errors after which the same statement, sent again, can succeed.
TRANSIENT_ERRORS = (psycopg2.errors.QueryCanceled, psycopg2.errors.TransactionRollbackError)
RECENT_LOSSES = 5  # times of the last losses each connection keeps (/healthz: flapping)
CLIENT_MARGIN = 5.0  # seconds past STATEMENT_TIMEOUT after which the client gives up
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3  # dead peer noticed in 25 s
BACKOFF_START = 0.1  # seconds before the first retry; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0


class DatabaseUnavailable(Exception):
    """The database could not be reached; str() is one line for the user."""


class NoFreeSlot(DatabaseUnavailable):
    """The server (or the role, or the database) has no connection slot free:
    worth waiting for, unlike a wrong password."""


# How the server says it has no connection slot for us (SQLSTATE 53300, which
# psycopg2 does not expose for a failed connection).
NO_FREE_SLOT = re.compile(r"too many (connections|clients)|remaining connection slots are reserved")
STILL_DOWN_EVERY = 60.0  # seconds between two "still down" lines while an outage lasts


class ConnectTimeout(Exception):
    """One connection attempt took longer than CONNECT_TIMEOUT."""


class NoAnswer(Exception):
    """A statement went unanswered past the client's deadline."""


class Stopped(Exception):
    """A ReconnectingConnection gave up retrying because its owner is stopping."""


class SteppedBack(Stopped):
    """A statement given up, unsent (or not sent again), because its process steps
    back for want of connection slots (the claiming lane's: see Gate.wait)."""


class TimedConnection(psycopg2.extensions.connection):
    """A connection whose every statement carries its own statement_timeout.

    The timeout travels with each statement (`SET LOCAL statement_timeout = N;`
    in front of it, one round trip, gone at the end of its transaction) rather
    than in the startup packet's `options` or a session `SET`: PgBouncer in
    transaction mode refuses the first (`unsupported startup parameter:
    options`) and would hand the second to other clients' transactions."""

    statement_timeout_ms: int | None = 0  # 0: none; None: no prefix (the session's own)
    local_settings = ""  # more `SET LOCAL ...;` sent in front of each statement (the dashboard's)
    prepared: set[str] | None = None  # statements prepared here; None: never prepare

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cursor_factory", TimedCursor)
        return super().cursor(*args, **kwargs)


class TimedCursor(psycopg2.extensions.cursor):
    connection: TimedConnection  # (only a TimedConnection makes TimedCursors)
    def execute(self, query: Any, vars: Params = None) -> Any:  # noqa: A002 (psycopg2's name)
        ms = self.connection.statement_timeout_ms
        if ms is None:  # (a statement that cannot run in a transaction block)
            return super().execute(query, vars)
        return super().execute(f"SET LOCAL statement_timeout = {ms}; "
                               f"{self.connection.local_settings}" + query, vars)


def connect(settings: Settings, *, autocommit: bool = True, name: str = "taskworker",
            statement_timeout: float | None = None, url: str | None = None,
            ) -> TimedConnection:
    """Open one connection (to `url`, else DATABASE_URL), bounded by CONNECT_TIMEOUT.

    libpq's own connect_timeout is not honoured once psycogreen makes connections
    asynchronous, so the bound is a gevent.Timeout, on each host of a URL that
    names several (`host1:5432,host2:5432`, tried in order, as libpq does: see
    `hosts`). TCP keepalives, and tcp_user_timeout for data sent but never
    acknowledged, make a dead peer or a silent partition show up as an error
    instead of a query that waits for ever. Each statement carries
    `statement_timeout` (default STATEMENT_TIMEOUT; 0: none): see TimedConnection.
    """
    timeout = settings.statement_timeout if statement_timeout is None else statement_timeout
    url = url or settings.database_url
    shown = mask_password(url)
    each = hosts(url)
    failures: list[str] = []
    no_slot = False
    for target, where in each:
        try:
            with gevent.Timeout(settings.connect_timeout, ConnectTimeout):
                conn = psycopg2.connect(
                    target,
                    connection_factory=TimedConnection,
                    application_name=name,
                    keepalives=1,
                    keepalives_idle=KEEPALIVE_IDLE,
                    keepalives_interval=KEEPALIVE_INTERVAL,
                    keepalives_count=KEEPALIVE_COUNT,
                    tcp_user_timeout=int(client_deadline(settings) * 1000),
                )
            break
        except ConnectTimeout:
            failures.append(f"{where}no answer within {settings.connect_timeout:g}s")
        except psycopg2.Error as exc:
            no_slot = no_slot or bool(NO_FREE_SLOT.search(str(exc)))
            failures.append(f"{where}{first_line(exc)}")
    else:
        kind = NoFreeSlot if no_slot else DatabaseUnavailable
        why = mask_secrets("; ".join(failures), url)  # libpq may quote the password (as a host)
        raise kind(f"cannot connect to database {shown}: {why}")
    conn.statement_timeout_ms = int(timeout * 1000)
    conn.autocommit = autocommit
    return conn


def hosts(url: str) -> list[tuple[str, str]]:
    """The connection strings `connect` tries in turn, each with the prefix its
    failure is said with: `url` itself (prefix "") when it names one host, else
    one per host of its list (`host`, `hostaddr` and `port` taken apart, in
    their order; shuffled with `load_balance_hosts=random`), prefix "HOST:PORT: ".

    libpq tries the hosts of one string in turn, each within connect_timeout;
    in green mode nothing bounds a host that does not answer (a machine down
    drops the packets) but the caller's timeout, which then ends the whole
    attempt before the next host is tried: an old primary down would hide the
    promoted replica listed after it. So each host gets an attempt, and a
    timeout, of its own. target_session_attrs and the rest go with each."""
    from psycopg2.extensions import make_dsn, parse_dsn

    try:
        params = parse_dsn(url)
    except psycopg2.Error:
        return [(url, "")]  # (libpq says why, in connect)
    lists = {key: params[key].split(",") for key in ("host", "hostaddr", "port")
             if key in params}
    count = max((len(values) for values in lists.values()), default=1)
    if count == 1 or any(len(values) not in (1, count) for values in lists.values()):
        return [(url, "")]  # (one host; or lists that do not match, which libpq refuses)
    each = []
    for i in range(count):
        one = dict(params)
        for key, values in lists.items():
            one[key] = values[i] if len(values) > 1 else values[0]  # (one port: for all)
        where = one.get("host") or one.get("hostaddr") or "localhost"
        each.append((make_dsn(**{k: v for k, v in one.items() if v != ""}),
                     f"{where}:{one.get('port') or 5432}: "))
    if params.get("load_balance_hosts") == "random":
        random.shuffle(each)
    return each


def client_deadline(settings: Settings) -> float:
    """Seconds a statement may go unanswered before the client gives up on the
    connection: the server's own STATEMENT_TIMEOUT never reaches a client cut
    off by a partition, so the client keeps a deadline of its own, a little
    longer."""
    return settings.statement_timeout + CLIENT_MARGIN


class Gate:
    """What a ReconnectingConnection asks around opening itself. This one lets
    every connection open whenever it likes; serve's (processor/shortage.py)
    holds them back while its process steps back for want of connection slots."""

    def wait(self, db: ReconnectingConnection) -> None:
        """Return once `db` may be opened; or raise SteppedBack, to give up the
        statement waiting for it."""

    def opened(self, db: ReconnectingConnection) -> bool:
        """`db` was just opened: may it stay open? (False: it is closed again,
        and waits.)"""
        return True

    def no_slot(self, db: ReconnectingConnection) -> bool:
        """The server had no connection slot for `db`. True: its process steps
        back, and `db` waits for it (`wait`) instead of backing off on its own."""
        return False


OPEN = Gate()


@dataclass(frozen=True)
class ConnectionState:
    """What /healthz and /metrics know of one connection."""

    name: str
    failing_since: float | None  # monotonic time it started failing; None: it works
    losses: tuple[float, ...]  # monotonic times of its last RECENT_LOSSES losses
    reconnects: int  # times it was opened again after a loss


class ReconnectingConnection:
    """One connection for one greenlet, re-opened whenever it breaks.

    A lost connection (server restart, network cut, idle-session kill) is closed,
    re-opened with capped exponential backoff, and the statement sent again; a
    statement the server rolled back whole (deadlock, statement_timeout) is sent
    again on the same connection; any other error is raised to the caller. So every
    statement sent through it must be safe to repeat: all of taskworker's are
    fenced or idempotent.

    `should_stop` is asked between retries; when it answers True the connection
    raises `Stopped` instead of waiting for the database any longer.

    Statements are its owner's alone; opening it is not: `gate` may have another
    greenlet open it for the owner (a process resuming after stepping back opens
    its connections together), so opening is serialized, and `let_go` closes it
    from anywhere once no statement uses it.
    """

    def __init__(self, settings: Settings, name: str,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_reconnect: Callable[[], None] | None = None,
                 url: str | None = None, prepare: bool = False) -> None:
        self.settings = settings
        self.name = name
        self.prepare = prepare  # prepare statements (prepared.Prepared) when direct
        self.url = url  # None: DATABASE_URL
        self.deadline = client_deadline(settings)
        self.should_stop = should_stop
        self.on_reconnect = on_reconnect
        self.gate = OPEN  # when it may open (serve's processes set theirs)
        self.conn: PgConnection | None = None
        self._opening = gevent.lock.Semaphore()
        self._in_use = False  # a statement is on it (`query`)
        self._let_go = False  # close it once that statement is done
        self._down_since: float | None = None  # first failure since the last connect
        # Like _down_since, but cleared only by a statement that succeeds, not by a
        # connect: a connection killed again and again right after opening stays
        # failing.
        self._failing_since: float | None = None
        self._losses: deque[float] = deque(maxlen=RECENT_LOSSES)
        self._reconnects = 0
        self._delay = BACKOFF_START
        self._said_at = 0.0  # when the outage was last logged
        # Monotonic time the last statement was sent: after `query` returns, the
        # send that succeeded (an outage may have taken many), which is when
        # the leases a claim takes start at the latest.
        self.sent_at = 0.0

    def state(self) -> ConnectionState:
        return ConnectionState(self.name, self._failing_since, tuple(self._losses),
                               self._reconnects)

    @property
    def failing(self) -> bool:
        """Failing now (as `state().failing_since`, without building the state:
        the fetcher asks before every claim)."""
        return self._failing_since is not None

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def is_open(self) -> bool:
        return self.conn is not None and not self.conn.closed

    @property
    def in_use(self) -> bool:
        """A statement is on it (sent, or waiting for the connection)."""
        return self._in_use

    def connection(self) -> PgConnection:
        """The live connection, opened (with retries) if needed."""
        if self.conn is not None and not self.conn.closed and not self._opening.locked():
            return self.conn  # (not while being opened: its session may be being prepared)
        with self._opening:
            while self.conn is None or self.conn.closed:
                self.gate.wait(self)
                try:
                    self.conn = connect(self.settings, name=f"taskworker {self.name}",
                                        url=self.url)
                    if self.prepare:
                        with gevent.Timeout(self.deadline, NoAnswer):
                            direct = prepared.direct_session(self.conn)
                        self.conn.prepared = set() if direct else None
                except NoFreeSlot as exc:
                    self.lost(exc, pause=False)
                    if not self.gate.no_slot(self):
                        self._pause()
                    continue
                except DatabaseUnavailable as exc:
                    self.lost(exc)
                    continue
                except (NoAnswer, *CONNECTION_ERRORS) as exc:
                    self.lost(exc)
                    continue
                if not self.gate.opened(self):  # its process stepped back meanwhile
                    self.close()
                    continue
                if self._down_since is not None:
                    self._down_since = None
                    self._reconnects += 1
                    log.info("Reconnected to database (%s)", self.name)
                    if self.on_reconnect:
                        self.on_reconnect()
        return self.conn

    def query(self, statement: str | prepared.Prepared, params: Params = None, *,
              resend_on_timeout: bool = True) -> list[Row]:
        """Run one statement in its own transaction and return its rows.

        With `resend_on_timeout` false, a statement cancelled by statement_timeout
        is raised (QueryCanceled) instead of sent again: its caller can send a
        smaller one."""
        self._in_use = True
        try:
            return self._query(statement, params, resend_on_timeout)
        finally:
            self._in_use = False
            if self._let_go:
                self.close()

    def _query(self, statement: str | prepared.Prepared, params: Params,
               resend_on_timeout: bool) -> list[Row]:
        while True:
            conn = self.connection()
            self.sent_at = time.monotonic()
            try:
                with gevent.Timeout(self.deadline, NoAnswer), conn.cursor() as cur:
                    rows = execute(cur, statement, params)
                self.worked()
                return rows
            except NoAnswer:
                # The server's statement_timeout would have answered by now: the
                # peer is gone or cut off (a partition drops packets silently).
                self.lost(NoAnswer(f"no answer within {self.deadline:g}s"))
            except CONNECTION_ERRORS as exc:
                if conn.closed:
                    self.lost(exc)
                elif isinstance(exc, psycopg2.errors.QueryCanceled) and not resend_on_timeout:
                    raise
                elif isinstance(exc, TRANSIENT_ERRORS):
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                    log.warning("Statement interrupted (%s): %s; retrying",
                                self.name, first_line(exc))
                    self._pause()
                else:
                    raise

    def worked(self) -> None:
        """A statement sent on `connection()` directly (not through `query`)
        succeeded: the connection works again."""
        self._failing_since = None
        self._delay = BACKOFF_START

    def lost(self, exc: BaseException, pause: bool = True) -> None:
        """The connection failed (or could not be opened): say so once per outage,
        close it, and wait out the backoff before the next attempt (with `pause`)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if self._down_since is None:
            self._down_since = self._said_at = now
            self._losses.append(now)
            log.warning("Database connection lost (%s): %s; reconnecting",
                        self.name, first_line(exc))
        elif now - self._said_at >= STILL_DOWN_EVERY:  # an outage is never silent for long
            self._said_at = now
            log.warning("Database connection (%s) still down after %.0fs: %s; reconnecting",
                        self.name, now - self._down_since, first_line(exc))
        self.close()
        if pause:
            self._pause()

    def recycle(self) -> None:
        """Close the connection on purpose (the next statement opens a new one):
        libpq keeps its buffers as large as the largest message they carried, so
        after a large payload or result this is how that memory is given back."""
        self.close()

    def let_go(self) -> bool:
        """Close the connection, now if no statement is on it, else as soon as
        that one is done (its process steps back for want of connection slots);
        one being opened is left to the gate. Whether it was open."""
        if not self.is_open:
            return False
        if self._in_use:
            self._let_go = True
        elif not self._opening.locked():
            self.close()
        return True

    def close(self) -> None:
        self._let_go = False
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def _pause(self) -> None:
        if self.should_stop():
            raise Stopped(self.name)
        gevent.sleep(self._delay * random.uniform(0.5, 1.0))
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        if self.should_stop():
            raise Stopped(self.name)
