"""The connections `taskworker.wait` and `wait_async` sleep on: each LISTENs
for awaited tasks finishing (channel taskworker_finished, migration 012), runs
the waiting steps' statements, commits what they opened, and sleeps until a
notification comes, in the way of its library:

    psycopg2 connection (or cursor)   select() on its socket, conn.notifies
    psycopg 3 Connection (or Cursor)  conn.notifies(timeout=, stop_after=1)
    psycopg 3 AsyncConnection         async for ... in conn.notifies(...)
    asyncpg connection                add_listener, an asyncio.Event

A waiter is a Database (AsyncDatabase) whose `query` also answers two steps
that are not SQL: COMMIT (end the transaction the statements opened, if one is
open) and SLEEP (sleep up to `params["seconds"]`, None: no limit; answered with
one row per task id notified). The waiting itself is written once, as steps
(results.py), and runs through drivers.run or run_async on any of these.

Only connections the caller gives up for the wait are taken: with no
transaction open (one inside a transaction could never see the outcome), left as
they were found (UNLISTEN at the end). SQLAlchemy's and Django's connections
manage their transactions themselves: wait on a connection of the library below
them (`result` reads through them all)."""
from __future__ import annotations

import asyncio
import select
from typing import Any

from ..store import admin, sql
from ..store.database import Direct, Params, Row
from . import async_database, database, described, library

COMMIT = "-- commit"  # a step: end the transaction our statements opened
SLEEP = "-- sleep"  # a step: sleep until a notification, or params["seconds"]
CHANNEL = "taskworker_finished"
_IDLE, _FAILED = 0, 3  # psycopg2.extensions.TRANSACTION_STATUS_IDLE and _INERROR
# A psycopg 3 that drops notifications arriving while notifies() is not running
# (before its backlog of them) is woken at least this often, to read again.
UNBUFFERED_SLEEP = 1.0
SYNC = "a psycopg2 or psycopg 3 connection"
ASYNC = "a psycopg 3 AsyncConnection or an asyncpg connection"
_BUSY = ("{} needs a connection with no transaction open: inside one it could never see "
         "the outcome; commit or roll back first")


def _rows(payloads: list[str]) -> list[Row]:
    """The task ids notified, as the SLEEP step's rows."""
    return [(int(p),) for p in set(payloads) if p.isdigit()]


def waiter(conn: Any) -> Any:
    """`conn` (idle) as a synchronous waiter; TypeError (one line) unless it is
    one of SYNC, RuntimeError if a transaction is open."""
    name = library(conn)
    if name == "psycopg2":
        import psycopg2.extensions

        if isinstance(conn, psycopg2.extensions.cursor):
            return _Psycopg2(conn.connection)
        if isinstance(conn, psycopg2.extensions.connection):
            return _Psycopg2(conn)
    if name == "psycopg":
        import psycopg

        if isinstance(conn, (psycopg.Connection, psycopg.Cursor)):
            return _Psycopg3(conn if isinstance(conn, psycopg.Connection) else conn.connection)
    hint = " (asynchronous: await taskworker.wait_async(...))" if _async_kind(conn) else ""
    raise TypeError(f"wait() needs {SYNC} of its own (it LISTENs and commits), "
                    f"not {described(conn)}{hint}")


def async_waiter(conn: Any) -> Any:
    """`conn` (idle) as an asynchronous waiter (see `waiter`)."""
    kind = _async_kind(conn)
    if kind == "psycopg":
        import psycopg

        return _Psycopg3Async(conn.connection if isinstance(conn, psycopg.AsyncCursor) else conn)
    if kind == "asyncpg":
        return _Asyncpg(conn)
    raise TypeError(f"wait_async() needs {ASYNC} of its own (it LISTENs), "
                    f"not {described(conn)}")


def _async_kind(conn: Any) -> str | None:
    name = library(conn)
    if name == "psycopg":
        import psycopg

        return "psycopg" if isinstance(conn, (psycopg.AsyncConnection,
                                              psycopg.AsyncCursor)) else None
    if name == "asyncpg":
        from . import numbered

        return "asyncpg" if numbered.is_connection(conn) else None
    return None


class _Waiter:
    """A synchronous waiter: LISTEN on entering, the steps' statements, COMMIT
    and SLEEP, UNLISTEN on leaving. Each library says how it tells a transaction
    open or failed, and how it sleeps."""

    def __init__(self, conn: Any, db: Any, name: str) -> None:
        self.conn, self.db = conn, db
        if self.open():
            raise RuntimeError(_BUSY.format(name))

    def open(self) -> bool:
        raise NotImplementedError

    def failed(self) -> bool:
        raise NotImplementedError

    def sleep(self, seconds: float | None) -> list[str]:
        """Sleep until a notification (or `seconds`); the payloads heard on CHANNEL."""
        raise NotImplementedError

    def __enter__(self) -> _Waiter:
        admin.listen_finished(self.db)
        self._commit()  # listening before the marks: no finish can fall between
        return self

    def query(self, statement: str, params: Params = None, *,
              resend_on_timeout: bool = True) -> list[Row]:
        if statement is COMMIT:
            self._commit()
            return []
        if statement is SLEEP:
            return _rows(self.sleep(params["seconds"]))  # type: ignore[index,call-overload]
        return self.db.query(statement, params)  # type: ignore[no-any-return]

    def _commit(self) -> None:
        if self.open():
            self.conn.commit()

    def __exit__(self, *exc: object) -> None:
        if self.conn.closed:
            return
        try:
            if self.failed():  # (failed midway: end it)
                self.conn.rollback()
            admin.listen_finished(self.db, listen=False)
            self._commit()
        except Exception:  # the connection broke: the error that did it is raised
            pass


class _Psycopg2(_Waiter):
    """A psycopg2 connection: sleeps on its socket. (A transaction is open
    after our statements even in autocommit mode inside `with conn:`: psycopg2
    2.9 opens one there; COMMIT ends it.)"""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn, Direct(conn), "wait()")

    def open(self) -> bool:
        return bool(self.conn.get_transaction_status() != _IDLE)

    def failed(self) -> bool:
        return bool(self.conn.get_transaction_status() == _FAILED)

    def sleep(self, seconds: float | None) -> list[str]:
        select.select([self.conn], [], [], seconds)
        self.conn.poll()
        heard = [n.payload for n in self.conn.notifies if n.channel == CHANNEL]
        self.conn.notifies.clear()
        return heard


class _Psycopg3States:
    """What psycopg 3's two connections share: their transaction's state, and
    how long a sleep in notifies() may last."""

    conn: Any

    def states(self) -> None:
        from psycopg.pq import TransactionStatus

        self.status = TransactionStatus
        self.longest = None if hasattr(self.conn, "_notifies_backlog") else UNBUFFERED_SLEEP

    def open(self) -> bool:
        return bool(self.conn.info.transaction_status != self.status.IDLE)

    def failed(self) -> bool:
        return bool(self.conn.info.transaction_status == self.status.INERROR)

    def notifies(self, seconds: float | None) -> dict[str, Any]:
        """The arguments of notifies() for a sleep of `seconds`."""
        if self.longest is not None:
            seconds = self.longest if seconds is None else min(seconds, self.longest)
        return {"timeout": seconds, "stop_after": 1}


class _Psycopg3(_Psycopg3States, _Waiter):
    """A psycopg 3 Connection: sleeps in its notifies() generator."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.states()
        super().__init__(conn, database(conn), "wait()")

    def sleep(self, seconds: float | None) -> list[str]:
        return [n.payload for n in self.conn.notifies(**self.notifies(seconds))
                if n.channel == CHANNEL]


class _Psycopg3Async(_Psycopg3States):
    """A psycopg 3 AsyncConnection: sleeps in its notifies() async generator."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.db = conn, async_database(conn)
        self.states()
        if self.open():
            raise RuntimeError(_BUSY.format("wait_async()"))

    async def __aenter__(self) -> _Psycopg3Async:
        await self.db.query(sql.listen_finished)
        await self._commit()
        return self

    async def query(self, statement: str, params: Params = None) -> list[Row]:
        if statement is COMMIT:
            await self._commit()
            return []
        if statement is SLEEP:
            seconds = params["seconds"]  # type: ignore[index,call-overload]
            return _rows([n.payload async for n in self.conn.notifies(**self.notifies(seconds))
                          if n.channel == CHANNEL])
        return await self.db.query(statement, params)

    async def _commit(self) -> None:
        if self.open():
            await self.conn.commit()

    async def __aexit__(self, *exc: object) -> None:
        if self.conn.closed:
            return
        try:
            if self.failed():
                await self.conn.rollback()
            await self.db.query(sql.unlisten_finished)
            await self._commit()
        except Exception:  # the connection broke: the error that did it is raised
            pass


class _Asyncpg:
    """An asyncpg connection (no implicit transaction: nothing to commit):
    add_listener's callback sets an asyncio.Event the sleep waits on."""

    def __init__(self, conn: Any) -> None:
        if conn.is_in_transaction():
            raise RuntimeError(_BUSY.format("wait_async()"))
        self.conn, self.db = conn, async_database(conn)
        self.heard: list[str] = []
        self.woken = asyncio.Event()

    def _hear(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.heard.append(payload)
        self.woken.set()

    async def __aenter__(self) -> _Asyncpg:
        await self.conn.add_listener(CHANNEL, self._hear)
        return self

    async def query(self, statement: str, params: Params = None) -> list[Row]:
        if statement is COMMIT:
            return []
        if statement is not SLEEP:
            return await self.db.query(statement, params)
        if not self.woken.is_set():
            try:
                await asyncio.wait_for(self.woken.wait(), params["seconds"])  # type: ignore[index,call-overload]
            except TimeoutError:
                pass
        came, self.heard[:] = _rows(self.heard), []
        self.woken.clear()
        return came

    async def __aexit__(self, *exc: object) -> None:
        if self.conn.is_closed():
            return
        try:
            await self.conn.remove_listener(CHANNEL, self._hear)
        except Exception:  # the connection broke: the error that did it is raised
            pass
