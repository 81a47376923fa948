"""Running a statement: the `Database` protocol every typed function of the
store takes, and `Direct`, a caller's own DB-API connection or cursor (psycopg2,
psycopg 3, Django's) used as one; `AsyncDatabase` and `Steps` for the enqueue
API, whose statements also run on asynchronous connections (drivers/).

Statements reach the server through something with a `query` method: a
`ReconnectingConnection` (connection.py) for serve's long-lived services, or
`Direct` for the admin commands and the enqueue API. This module imports no
gevent, so the enqueue API works in a plain blocking program.
"""
from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.sql

from . import prepared

PgConnection = psycopg2.extensions.connection
Params = Mapping[str, Any] | Sequence[Any] | None
Row = tuple[Any, ...]
Text = str | psycopg2.sql.Composable  # a statement as psycopg2 takes it


class Database(Protocol):
    """Anything that runs one statement and returns its rows. `resend_on_timeout`
    false: a statement cancelled by statement_timeout is raised, not sent again
    (its caller sends a smaller one)."""

    def query(self, statement: str | prepared.Prepared, params: Params = None, *,
              resend_on_timeout: bool = True) -> list[Row]: ...


class AsyncDatabase(Protocol):
    """`Database` for a caller's asynchronous connection (drivers/): the same
    statements, awaited."""

    async def query(self, statement: str, params: Params = None) -> list[Row]: ...


T = TypeVar("T")
# What the enqueue API sends, as a generator: it yields each statement with its
# parameters, is sent back the rows, and returns its value. The same steps run on
# a `Database` or, awaited, on an `AsyncDatabase` (drivers.run, drivers.run_async),
# so that the sync and async enqueue are one code path.
Steps = Generator[tuple[str, dict[str, Any]], list[Row], T]


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an error message (libpq's are multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def execute(cur: psycopg2.extensions.cursor, statement: Text | prepared.Prepared,
            params: Params) -> list[Row]:
    """Run one statement on a cursor; its rows, or [] when it returns none."""
    if isinstance(statement, prepared.Prepared):
        prepared.run(cur, statement, params)  # type: ignore[arg-type]
    else:
        cur.execute(statement, params)
    return cur.fetchall() if cur.description is not None else []


class Direct:
    """A caller's DB-API connection or cursor taking `%(name)s` parameters
    (psycopg2, psycopg 3, Django's), used as it is: its transaction, no retries,
    errors raised to the caller. (Prepared statements: psycopg2's only.)"""

    _cursor: Any  # the caller's cursor (or another wrapper's) statements run on; else None
    _conn: Any  # else the caller's connection, on which each statement opens a cursor

    def __init__(self, conn_or_cursor: Any) -> None:
        if isinstance(conn_or_cursor, psycopg2.extensions.cursor):
            self._cursor, self._conn = conn_or_cursor, None
        elif isinstance(conn_or_cursor, PgConnection) or callable(
                getattr(conn_or_cursor, "cursor", None)):  # (a Django cursor's is no method)
            self._cursor, self._conn = None, conn_or_cursor
        elif hasattr(conn_or_cursor, "execute"):  # a cursor-like object of another wrapper
            self._cursor, self._conn = conn_or_cursor, None
        else:
            raise TypeError("expected a psycopg2 connection or cursor, "
                            f"not {type(conn_or_cursor).__name__}")

    def query(self, statement: Text | prepared.Prepared, params: Params = None, *,
              resend_on_timeout: bool = True) -> list[Row]:
        """(Nothing is ever sent again here: `resend_on_timeout` is the protocol's.)"""
        if self._cursor is not None:
            return execute(self._cursor, statement, params)
        with self._conn.cursor() as cur:
            return execute(cur, statement, params)

    def query_named(self, statement: str, params: Params = None) -> list[dict[str, Any]]:
        """Rows as dicts in column order (for `SELECT *`)."""
        with self._conn.cursor() as cur:
            rows = execute(cur, statement, params)
            names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]
