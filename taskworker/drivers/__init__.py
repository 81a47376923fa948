"""The caller's own connection, whatever library made it, as the enqueue API's
`Database` (or `AsyncDatabase`): the statements run in the caller's transaction,
which is never committed, rolled back or changed here.

    synchronous (enqueue, enqueue_many, enqueue_unique, task.enqueue):
        psycopg2 connection or cursor, psycopg 3 Connection or Cursor,
        SQLAlchemy 2 Connection or Session, Django's connection (PostgreSQL)
    asynchronous (enqueue_async, ..., await task.enqueue_async):
        psycopg 3 AsyncConnection or AsyncCursor, SQLAlchemy AsyncConnection or
        AsyncSession, asyncpg Connection (a pool's too)

An object is recognised by the module of its type (or of a base class), read
before anything is imported: a library is imported only to use an object of its
own, so none of them is a dependency of taskworker (pyproject's extras name
them). Anything else is refused with one line naming what is taken.

The parameter style is each library's: psycopg2, psycopg 3 and Django take
queries.sql's `%(name)s` as it is; SQLAlchemy and asyncpg get the statement
converted once (store/paramstyles.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..store.database import AsyncDatabase, Database, Direct, Row, Steps, T

D = TypeVar("D")

LIBRARIES = ("psycopg2", "psycopg", "sqlalchemy", "django", "asyncpg")
SYNC = ("a psycopg2 or psycopg 3 connection or cursor, an SQLAlchemy Connection or "
        "Session, or Django's connection")
ASYNC = ("a psycopg 3 AsyncConnection or AsyncCursor, an SQLAlchemy AsyncConnection or "
         "AsyncSession, or an asyncpg connection")


def run(conn: Any, steps: Steps[T], adapt: Callable[[Any], Database] | None = None) -> T:
    """Run the enqueue API's `steps` on `conn`; their value. `conn` is looked at
    only if a statement is to be sent (the eager test mode sends none). `adapt`
    makes the Database out of `conn` (default: `database`; `wait` gives its
    waiter, drivers/waiters.py)."""
    run = _Exchange(steps)
    try:
        if run.step is not None:
            db = run.call(adapt or database, conn)
            while run.step is not None:
                run.answer_with(db.query, *run.step)
        return run.value  # type: ignore[return-value]
    finally:
        steps.close()


async def run_async(conn: Any, steps: Steps[T],
                    adapt: Callable[[Any], AsyncDatabase] | None = None) -> T:
    """`run`, awaiting each statement on an asynchronous connection."""
    run = _Exchange(steps)
    try:
        if run.step is not None:
            db = run.call(adapt or async_database, conn)
            while run.step is not None:
                try:
                    rows = await db.query(*run.step)
                except BaseException as exc:
                    run.fail(exc)
                else:
                    run.answer(rows)
        return run.value  # type: ignore[return-value]
    finally:
        steps.close()


class _Exchange(Generic[T]):
    """The steps of one enqueue as a driver runs them: `step` is the statement
    they wait on, None once they have returned `value`. An error of the
    connection (or a refused connection) is thrown into them where they wait: a
    `with` they hold across their statements (tracing's PRODUCER span) ends
    there, seeing it, before it reaches the caller."""

    __slots__ = ("steps", "step", "value")

    def __init__(self, steps: Steps[T]) -> None:
        self.steps = steps
        self.step: tuple[str, dict[str, Any]] | None = None
        self.value: T | None = None
        self._move(next, steps)

    def _move(self, move: Callable[..., tuple[str, dict[str, Any]]], arg: Any) -> None:
        try:
            self.step = move(arg)
        except StopIteration as done:
            self.step, self.value = None, done.value

    def answer(self, rows: list[Row]) -> None:
        self._move(self.steps.send, rows)

    def fail(self, exc: BaseException) -> None:
        """Throw `exc` into the steps (which raise it again, unless they catch it)."""
        self._move(self.steps.throw, exc)

    def answer_with(self, query: Callable[..., list[Row]], *args: Any) -> None:
        try:
            rows = query(*args)
        except BaseException as exc:
            self.fail(exc)
        else:
            self.answer(rows)

    def call(self, fn: Callable[[Any], D], arg: Any) -> D:
        """`fn(arg)`; an error it raises thrown into the steps, then raised."""
        try:
            return fn(arg)
        except BaseException as exc:
            self.fail(exc)
            raise


def library(conn: Any) -> str | None:
    """Which of LIBRARIES made `conn` (its type's module, or a base class's)."""
    for cls in type(conn).__mro__:
        top = cls.__module__.partition(".")[0]
        if top in LIBRARIES:
            return top
    return None


def described(conn: Any) -> str:
    """`conn`'s type as a refusal names it: with its module when it is one of
    LIBRARIES' (`psycopg.AsyncConnection`), else its bare name."""
    kind = type(conn)
    return f"{kind.__module__}.{kind.__qualname__}" if library(conn) else kind.__name__


def database(conn: Any) -> Database:
    """`conn` as a Database, or TypeError (one line) if it is none of SYNC."""
    return _adapt(conn, _SYNC, _sync_maker, _async_maker, SYNC,
                  "asynchronous: await taskworker.enqueue_async(...)")


def async_database(conn: Any) -> AsyncDatabase:
    """`conn` as an AsyncDatabase, or TypeError (one line) if it is none of ASYNC."""
    return _adapt(conn, _ASYNC, _async_maker, _sync_maker, ASYNC,
                  "synchronous: taskworker.enqueue(...), no await")


# How each type met so far is wrapped (found once per type).
_SYNC: dict[type, Callable[[Any], Any]] = {}
_ASYNC: dict[type, Callable[[Any], Any]] = {}


def _adapt(conn: Any, made: dict[type, Callable[[Any], Any]],
           maker: Callable[[Any], Callable[[Any], Any] | None],
           other: Callable[[Any], Callable[[Any], Any] | None], takes: str,
           instead: str) -> Any:
    """`conn` wrapped by what `maker` finds for its type; TypeError if nothing:
    the one line says what is taken, and `instead` when the `other` API takes it."""
    wrap = made.get(type(conn))
    if wrap is None:
        wrap = maker(conn)
        if wrap is None:
            raise TypeError(f"expected {takes}, not {described(conn)}"
                            + (f" ({instead})" if other(conn) is not None else ""))
        made[type(conn)] = wrap
    return wrap(conn)


def _sync_maker(conn: Any) -> Callable[[Any], Database] | None:
    name = library(conn)
    if name == "psycopg2":
        return Direct
    if name == "psycopg":
        from . import pyformat

        if pyformat.is_psycopg3_sync(conn):
            return lambda c: Direct(pyformat.psycopg3_cursor(c))
    if name == "django":
        from . import pyformat

        if pyformat.is_django(conn):
            return lambda c: Direct(pyformat.django_connection(c))
    if name == "sqlalchemy":
        from . import alchemy

        if alchemy.is_sync(conn):
            return alchemy.Alchemy
    return None


def _async_maker(conn: Any) -> Callable[[Any], AsyncDatabase] | None:
    name = library(conn)
    if name == "psycopg":
        from . import pyformat

        if pyformat.is_psycopg3_async(conn):
            return pyformat.AsyncCursor
    if name == "sqlalchemy":
        from . import alchemy

        if alchemy.is_async(conn):
            return alchemy.AsyncAlchemy
    if name == "asyncpg":
        from . import numbered

        if numbered.is_connection(conn):
            return numbered.Asyncpg
    return None
