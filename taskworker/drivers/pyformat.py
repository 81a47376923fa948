"""Callers' objects whose cursors take queries.sql's `%(name)s` as it is:
psycopg 3 (sync and async) and Django's connection (psycopg2's connections and
cursors go to store.database.Direct as they are). Each library is imported here
only once an object of its own was met (see drivers/)."""
from __future__ import annotations

from typing import Any

from ..store.database import Params, Row


def is_psycopg3_sync(conn: Any) -> bool:
    import psycopg

    return isinstance(conn, (psycopg.Connection, psycopg.Cursor, psycopg.ServerCursor))


def is_psycopg3_async(conn: Any) -> bool:
    import psycopg

    return isinstance(conn, (psycopg.AsyncConnection, psycopg.AsyncCursor,
                             psycopg.AsyncServerCursor))


class _Psycopg3Cursors:
    """Opens the cursors statements run on: plain cursors of the caller's
    connection (its transaction) that return tuples and take `%(name)s`, whatever
    the connection's row_factory (dict_row is common) and cursor_factory (a
    RawCursor takes `$1`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def cursor(self) -> Any:
        import psycopg
        from psycopg.rows import tuple_row

        return psycopg.Cursor(self.conn, row_factory=tuple_row)


def psycopg3_cursor(conn: Any) -> Any:
    """What store.database.Direct runs statements on for a psycopg 3 Connection
    or Cursor (a cursor's connection: the same transaction)."""
    import psycopg

    return _Psycopg3Cursors(conn if isinstance(conn, psycopg.Connection) else conn.connection)


class AsyncCursor:
    """A psycopg 3 AsyncConnection or AsyncCursor as an AsyncDatabase."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        import psycopg

        self.conn = conn if isinstance(conn, psycopg.AsyncConnection) else conn.connection

    async def query(self, statement: str, params: Params = None) -> list[Row]:
        import psycopg
        from psycopg.rows import tuple_row

        async with psycopg.AsyncCursor(self.conn, row_factory=tuple_row) as cur:
            await cur.execute(statement, params)
            return await cur.fetchall() if cur.description is not None else []


def is_django(conn: Any) -> bool:
    """Django's `connection` (a proxy), `connections[alias]`, or a cursor of one."""
    return hasattr(conn, "vendor") or (hasattr(conn, "db") and hasattr(conn, "execute"))


def django_connection(conn: Any) -> Any:
    """A Django connection or cursor, used as it is (its cursors take
    `%(name)s` with either driver); TypeError unless it is PostgreSQL's."""
    wrapper = conn.db if not hasattr(conn, "vendor") else conn
    if wrapper.vendor != "postgresql":
        raise TypeError(f"Django's connection {wrapper.alias!r} is to {wrapper.vendor}; "
                        "taskworker needs PostgreSQL")
    return conn
