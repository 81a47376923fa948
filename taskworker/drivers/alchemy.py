"""SQLAlchemy 2's Connection and Session, and their asyncio forms, as the
enqueue API's database: each statement goes through `text()` (its parameters
converted once, store/paramstyles.py) on the caller's connection or session, so
it joins the transaction they began and leaves the commit to them. Imported
only once an SQLAlchemy object was met (see drivers/)."""
from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..store.database import Params, Row
from ..store.paramstyles import colon
from ..store.prepared import Prepared


def is_sync(conn: Any) -> bool:
    return isinstance(conn, (Connection, Session))


def is_async(conn: Any) -> bool:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    return isinstance(conn, (AsyncConnection, AsyncSession))


@functools.cache
def clause(statement: str) -> TextClause:
    """The `text()` of a statement, built once (SQLAlchemy then finds its
    compiled form in its cache)."""
    return text(colon(statement))


def _postgresql(conn: Any) -> Any:
    """`conn`, after checking that it talks to PostgreSQL (TypeError, one line)."""
    dialect = conn.dialect if hasattr(conn, "dialect") else conn.get_bind().dialect
    if dialect.name != "postgresql":
        raise TypeError(f"this SQLAlchemy {type(conn).__name__} is bound to {dialect.name}; "
                        "taskworker needs PostgreSQL")
    return conn


class Alchemy:
    """A Connection or Session as a Database."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = _postgresql(conn)

    def query(self, statement: str | Prepared, params: Params = None, *,
              resend_on_timeout: bool = True) -> list[Row]:
        text = statement if isinstance(statement, str) else statement.text  # (sent whole)
        result = self.conn.execute(clause(text), params)
        return list(result) if result.returns_rows else []


class AsyncAlchemy:
    """An AsyncConnection or AsyncSession as an AsyncDatabase."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = _postgresql(conn)

    async def query(self, statement: str, params: Params = None) -> list[Row]:
        result = await self.conn.execute(clause(statement), params)
        return list(result) if result.returns_rows else []
