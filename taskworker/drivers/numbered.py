"""asyncpg connections as the enqueue API's database: asyncpg takes `$1`
parameters in order, so each statement is converted once (store/paramstyles.py)
and its parameters are passed by position. asyncpg binds on the server, which
is why queries.sql casts a parameter where nothing else gives it a type.
Imported only once an asyncpg object was met (see drivers/)."""
from __future__ import annotations

from typing import Any

from ..store.database import Params, Row
from ..store.paramstyles import numbered


def is_connection(conn: Any) -> bool:
    """A Connection, or what `pool.acquire()` gives (a pool itself has no
    transaction to join: refused)."""
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    return isinstance(conn, (asyncpg.Connection, PoolConnectionProxy))


class Asyncpg:
    """An asyncpg connection as an AsyncDatabase (its statement cache prepares
    each statement once per connection)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def query(self, statement: str, params: Params = None) -> list[Row]:
        text, names = numbered(statement)
        given: Any = params or {}
        return await self.conn.fetch(text, *[given[name] for name in names])  # type: ignore[no-any-return]
