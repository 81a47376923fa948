"""Enqueue from any stack (part 16, item 1): psycopg 3, SQLAlchemy 2 (sync and
async), asyncpg and Django's connection, each the real library against the real
server. One scenario runs through every producer: enqueue a text task, a batch,
a unique task twice, two calls, a chain and a group with its callback inside the
caller's transaction; nobody else
sees them before the commit; a rollback leaves nothing and wakes nobody; a commit
leaves every row and the insert trigger's NOTIFY; the connection is as it was.
The async producers run the same scenario, each call awaited on one event loop.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
from invariants import query, wait_until

import taskworker
from taskworker import registry
from taskworker.client import UnknownTaskName
from taskworker.registry import RegistryError


@pytest.fixture
def add(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A registered task, in a copy of the registry (gone after the test)."""
    monkeypatch.setattr(registry, "_registry", registry.registered())

    @taskworker.task("producers.add", queue="sums")
    def add(a: int, b: int = 0) -> int:
        return a + b

    return add


@dataclass
class Producer:
    """One library's connection as an application holds it."""

    target: Any  # what the application passes to enqueue
    commit: Callable[[], Any]
    rollback: Callable[[], Any]
    state: Callable[[], Any]  # the settings enqueue must leave alone
    begin: Callable[[], Any] = lambda: None  # (asyncpg: transactions are explicit)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    asynchronous: bool = False


def driver_url(db_url: str, driver: str) -> str:
    return db_url.replace("postgresql://", f"postgresql+{driver}://", 1)


def psycopg3_connection(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    import psycopg
    from psycopg.rows import dict_row

    conn = psycopg.connect(db_url, row_factory=dict_row)  # (rows as dicts: still ids back)
    return Producer(conn, conn.commit, conn.rollback,
                    lambda: (conn.autocommit, conn.isolation_level, conn.row_factory),
                    closers=[conn.close])


def psycopg3_cursor(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    import psycopg

    conn = psycopg.connect(db_url, cursor_factory=psycopg.RawCursor)  # ($1 placeholders)
    cur = conn.cursor()
    return Producer(cur, conn.commit, conn.rollback, lambda: (conn.autocommit, cur.closed),
                    closers=[conn.close])


def sqlalchemy_connection(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    from sqlalchemy import create_engine

    engine = create_engine(driver_url(db_url, "psycopg"))
    conn = engine.connect()
    return Producer(conn, conn.commit, conn.rollback, lambda: dict(conn.get_execution_options()),
                    closers=[conn.close, engine.dispose])


def sqlalchemy_session(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(driver_url(db_url, "psycopg2"))
    session = Session(engine)
    return Producer(session, session.commit, session.rollback, lambda: session.autoflush,
                    closers=[session.close, engine.dispose])


def psycopg3_async(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    import psycopg

    conn = loop.run_until_complete(psycopg.AsyncConnection.connect(db_url))
    return Producer(conn, conn.commit, conn.rollback,
                    lambda: (conn.autocommit, conn.isolation_level),
                    closers=[conn.close], asynchronous=True)


def sqlalchemy_async_connection(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(driver_url(db_url, "asyncpg"))
    conn = loop.run_until_complete(engine.connect())
    return Producer(conn, conn.commit, conn.rollback,
                    lambda: dict(conn.sync_connection.get_execution_options()),
                    closers=[conn.close, engine.dispose],
                    asynchronous=True)


def sqlalchemy_async_session(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(driver_url(db_url, "psycopg"))
    session = AsyncSession(engine)
    return Producer(session, session.commit, session.rollback,
                    lambda: session.sync_session.autoflush,
                    closers=[session.close, engine.dispose],
                    asynchronous=True)


def asyncpg_pool(db_url: str, loop: asyncio.AbstractEventLoop) -> Producer:
    import asyncpg

    async def connect() -> tuple[Any, Any]:  # (made inside the loop: the pool keeps it)
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        return pool, await pool.acquire()  # (a pool's connection: a proxy)

    pool, conn = loop.run_until_complete(connect())
    transaction: list[Any] = []

    async def begin() -> None:
        transaction[:] = [conn.transaction()]
        await transaction[0].start()

    return Producer(conn, lambda: transaction[0].commit(), lambda: transaction[0].rollback(),
                    lambda: conn.is_in_transaction(), begin,
                    closers=[lambda: pool.release(conn), pool.close], asynchronous=True)


PRODUCERS = {f.__name__: f for f in (
    psycopg3_connection, psycopg3_cursor, sqlalchemy_connection, sqlalchemy_session,
    psycopg3_async, sqlalchemy_async_connection, sqlalchemy_async_session, asyncpg_pool)}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def listener(db_url: str) -> Iterator[Any]:
    """A psycopg2 session LISTENing on the insert trigger's channel."""
    conn = psycopg2.connect(db_url, connect_timeout=10)
    conn.autocommit = True
    query(conn, "LISTEN taskworker_tasks")
    yield conn
    conn.close()


def notifications(listener: Any, db: Any) -> list[str]:
    """Every notification sent on the channel since the last call: a probe is
    sent after them, and read once it arrives (so none still in flight is missed)."""
    query(db, "NOTIFY taskworker_tasks, 'probe'")
    got: list[str] = []

    def probe_arrived() -> bool:
        listener.poll()
        got.extend(n.payload for n in listener.notifies)
        listener.notifies.clear()
        return "probe" in got

    wait_until(probe_arrived, 10, "the probe notification")
    return [p for p in got if p != "probe"]


def settled(loop: asyncio.AbstractEventLoop) -> Callable[[Any], Any]:
    """What runs a step of the scenario: awaited on `loop` when it is awaitable."""
    return lambda value: loop.run_until_complete(value) if inspect.isawaitable(value) \
        else value


def enqueue_everything(p: Producer, run: Callable[[Any], Any], add: Any) -> dict[str, Any]:
    """The scenario's enqueues, in the caller's open transaction."""
    c = p.target
    api = ((taskworker.enqueue_async, taskworker.enqueue_many_async,
            taskworker.enqueue_unique_async, add.enqueue_async) if p.asynchronous else
           (taskworker.enqueue, taskworker.enqueue_many, taskworker.enqueue_unique,
            add.enqueue))
    enqueue, many, unique, call = api
    flows = (taskworker.chain(add.s(1), add.s(b=10)),
             taskworker.group(add.s(2), add.s(3)).then(add.s()))
    return {"text": run(enqueue(c, "one", priority=3)),
            "many": run(many(c, ["two", "three"], queue="bulk")),
            "unique": [run(unique(c, "four", "key-1")), run(unique(c, "again", "key-1"))],
            "call": run(call(c, 1, b=2)),
            "by_name": run(enqueue(c, task="producers.add", args=[5], kwargs={"b": 6})),
            "flows": [run(f.enqueue_async(c) if p.asynchronous else f.enqueue(c))
                      for f in flows]}


def workflow_rows(db: Any, flows: list[Any]) -> dict[int, tuple[Any, ...]]:
    """Each workflow task's (workflow id, status, arguments, next_ids), and
    whether it has a taskworker_waits row."""
    ids = [i for f in flows for i in f.task_ids]
    return {r[0]: r[1:] for r in query(
        db, "SELECT id, workflow_id, status, arguments::text, next_ids, "
            "EXISTS (SELECT 1 FROM taskworker_waits w WHERE w.task_id = t.id) "
            "FROM tasks t WHERE id = ANY(%s)", (ids,))}


@pytest.mark.parametrize("make", PRODUCERS.values(), ids=list(PRODUCERS))
def test_every_producer_enqueues_in_the_callers_transaction(
        make: Callable[..., Producer], db_url: str, db: Any, listener: Any,
        loop: asyncio.AbstractEventLoop, add: Any) -> None:
    p, run = make(db_url, loop), settled(loop)
    # A process sleeps (its row says asleep): inserts notify it at their commit.
    query(db, "INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, "
              "default_handler, schedules, lease_seconds, asleep) "
              "VALUES ('sleeper', 'h', 1, NULL, '{}', true, '{}', 30, true)")
    try:
        run(p.begin())
        before = p.state()
        enqueue_everything(p, run, add)
        assert p.state() == before
        assert query(db, "SELECT count(*) FROM tasks")[0][0] == 0  # not committed
        run(p.rollback())
        assert query(db, "SELECT count(*) FROM tasks")[0][0] == 0
        assert notifications(listener, db) == []  # a rollback wakes nobody

        run(p.begin())
        ids = enqueue_everything(p, run, add)
        assert query(db, "SELECT count(*) FROM tasks")[0][0] == 0
        run(p.commit())
        assert notifications(listener, db)  # the insert trigger's, sent at the commit
        first, again = ids["unique"]
        assert (first.inserted, again.inserted, again.id) == (True, False, first.id)
        rows = {r[0]: r[1:] for r in query(
            db, "SELECT id, payload, arguments::text, format, task, queue, priority, "
                "unique_key FROM tasks WHERE workflow_id IS NULL")}
        args = {"args": [1], "kwargs": {"b": 2}}
        assert rows == {
            ids["text"]: ("one", None, 1, None, "default", 3, None),
            ids["many"][0]: ("two", None, 1, None, "bulk", 0, None),
            ids["many"][1]: ("three", None, 1, None, "bulk", 0, None),
            first.id: ("four", None, 1, None, "default", 0, "key-1"),
            ids["call"]: (None, json.dumps(args), 2, "producers.add", "sums", 0, None),
            ids["by_name"]: (None, json.dumps({"args": [5], "kwargs": {"b": 6}}), 2,
                             "producers.add", "sums", 0, None)}
        assert ids["many"][0] < ids["many"][1]
        # The chain and the group with its callback: every row, linked, the waiting
        # ones with their count of parents.
        chained, grouped = ids["flows"]
        a, b = chained.task_ids
        m1, m2, cb = grouped.task_ids
        call = json.dumps  # (the stored JSON call of add)
        assert workflow_rows(db, ids["flows"]) == {
            a: (chained.id, "pending", call({"args": [1], "kwargs": {}}), [b], False),
            b: (chained.id, "waiting", call({"args": [], "kwargs": {"b": 10}}), None, True),
            m1: (grouped.id, "pending", call({"args": [2], "kwargs": {}}), [cb], False),
            m2: (grouped.id, "pending", call({"args": [3], "kwargs": {}}), [cb], False),
            cb: (grouped.id, "waiting", call({"args": [], "kwargs": {}}), None, True)}
        assert (chained.last, grouped.last) == ([b], [cb])
        assert query(db, "SELECT task_id, parents_left FROM taskworker_waits "
                         "ORDER BY task_id") == [(b, 1), (cb, 2)]
    finally:
        for close in p.closers:
            run(close())


def test_each_api_refuses_what_it_cannot_use_in_one_line(
        db_url: str, loop: asyncio.AbstractEventLoop, add: Any) -> None:
    import asyncpg
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    sync_takes = ("expected a psycopg2 or psycopg 3 connection or cursor, an SQLAlchemy "
                  "Connection or Session, or Django's connection, not ")
    async_takes = ("expected a psycopg 3 AsyncConnection or AsyncCursor, an SQLAlchemy "
                   "AsyncConnection or AsyncSession, or an asyncpg connection, not ")
    with pytest.raises(TypeError) as refused:
        taskworker.enqueue(object(), "x")
    assert str(refused.value) == sync_takes + "object"
    with pytest.raises(TypeError) as refused:
        loop.run_until_complete(add.enqueue_async(None, 1))
    assert str(refused.value) == async_takes + "NoneType"

    aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(db_url))
    conn = psycopg.connect(db_url)

    async def make_pool() -> Any:
        return await asyncpg.create_pool(db_url, min_size=1, max_size=1)

    pool = loop.run_until_complete(make_pool())
    sqlite = Session(create_engine("sqlite://"))
    try:
        with pytest.raises(TypeError) as refused:
            add.enqueue(aconn, 1)
        assert str(refused.value) == (sync_takes + "psycopg.AsyncConnection (asynchronous: "
                                      "await taskworker.enqueue_async(...))")
        with pytest.raises(TypeError) as refused:
            loop.run_until_complete(taskworker.enqueue_many_async(conn, ["x"]))
        assert str(refused.value) == (async_takes + "psycopg.Connection (synchronous: "
                                      "taskworker.enqueue(...), no await)")
        with pytest.raises(TypeError) as refused:  # a pool has no transaction to join
            loop.run_until_complete(taskworker.enqueue_async(pool, "x"))
        assert str(refused.value) == async_takes + "asyncpg.pool.Pool"
        with pytest.raises(TypeError, match="^this SQLAlchemy Session is bound to sqlite; "
                                            "taskworker needs PostgreSQL$"):
            taskworker.enqueue(sqlite, "x")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # nothing sent
    finally:
        conn.close()
        loop.run_until_complete(aconn.close())
        loop.run_until_complete(pool.close())


DJANGO_APP = """
import sys
if sys.argv[2] == "psycopg2":
    sys.modules["psycopg"] = None  # Django then falls back on psycopg2
import django
from django.conf import settings
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
settings.configure(DATABASES={
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": u.path[1:],
                "USER": u.username, "HOST": u.hostname, "PORT": u.port},
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
django.setup()
from django.db import connection, connections, transaction
import taskworker


@taskworker.task("producers.add")
def add(a, b=0):
    return a + b


class Undo(Exception):
    pass


def count():
    with connections["default"].cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks")
        return cur.fetchone()[0]


try:
    with transaction.atomic():
        taskworker.enqueue(connection, "rolled back")
        add.enqueue(connection, 1)
        taskworker.chain(add.s(1), add.s()).enqueue(connection)
        raise Undo
except Undo:
    pass
assert count() == 0, count()
with transaction.atomic():
    first = taskworker.enqueue(connection, "one")
    with connection.cursor() as cur:
        many = taskworker.enqueue_many(cur, ["two", "three"])
    unique = taskworker.enqueue_unique(connections["default"], "four", "k")
    call = add.enqueue(connection, 1, b=2)
    flow = taskworker.group(add.s(1), add.s(2)).then(add.s()).enqueue(connection)
    assert connection.in_atomic_block
assert count() == 8, count()
with connection.cursor() as cur:
    cur.execute("UPDATE tasks SET status = 'done', return_value = '3' WHERE id = %s", [call])
with transaction.atomic():
    assert taskworker.result(connection, call) == 3
    assert len(flow.task_ids) == 3
try:
    taskworker.enqueue(connections["other"], "x")
except TypeError as exc:
    refused = str(exc)
print(connection.Database.__name__, first, many, unique.inserted, call, refused)
"""


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_django_connection_enqueues_in_transaction_atomic(db_url: str, db: Any,
                                                          driver: str) -> None:
    """Django's `connection` on either driver (a fresh process each: Django is
    configured once per process; psycopg hidden makes Django take psycopg2)."""
    pytest.importorskip("django")
    done = subprocess.run([sys.executable, "-c", DJANGO_APP, db_url, driver],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    used, first, *rest = done.stdout.split(" ", 2)
    assert used == driver
    assert rest[0].endswith("Django's connection 'other' is to sqlite; taskworker needs "
                            "PostgreSQL\n")
    assert sorted(r[0] for r in query(db, "SELECT payload FROM tasks WHERE format = 1")) == [
        "four", "one", "three", "two"]


def test_async_def_tasks_are_refused_at_registration(add: Any) -> None:
    with pytest.raises(RegistryError, match=r"^task 'producers.coroutine' is an async def "
                                            r"function, and taskworker's workers are gevent "
                                            r"greenlets .*; write it as a plain def"):
        @taskworker.task("producers.coroutine")
        async def coroutine() -> None:
            pass

    assert "producers.coroutine" not in registry.registered()


TRACED = {name: PRODUCERS[name] for name in (
    "psycopg3_connection", "psycopg3_async", "sqlalchemy_async_session", "asyncpg_pool")}


@pytest.mark.parametrize("make", TRACED.values(), ids=list(TRACED))
def test_every_producer_traces_and_checks_names(
        make: Callable[..., Producer], db_url: str, db: Any, loop: asyncio.AbstractEventLoop,
        add: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The enqueue's steps hold its PRODUCER span across their statements, sync
    or async: each enqueue is a span under the caller's, whose context its rows
    keep; a statement the server refuses ends the span with the error. A name
    this process does not register is refused (force=True insists) on each API."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from taskworker import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", lambda: provider.get_tracer("taskworker"))
    monkeypatch.setattr(tracing, "_provided", True)  # (this provider stands for the global one)
    p, run = make(db_url, loop), settled(loop)
    api = ((taskworker.enqueue_async, taskworker.enqueue_many_async,
            taskworker.enqueue_unique_async, add.enqueue_async) if p.asynchronous else
           (taskworker.enqueue, taskworker.enqueue_many, taskworker.enqueue_unique,
            add.enqueue))
    enqueue, many, unique, call = api
    c = p.target
    try:
        run(p.begin())
        with provider.get_tracer("app").start_as_current_span("request") as request:
            ids = {"call": run(call(c, 1)), "many": run(many(c, ["a", "b"])),
                   "unique": run(unique(c, "u", "key")).id,
                   "forced": run(enqueue(c, task="producers.ad", args=[1], force=True))}
            flow = taskworker.group(add.s(1), add.s(2)).then(add.s())
            ids["flow"] = run(flow.enqueue_async(c) if p.asynchronous else flow.enqueue(c))
            for refused in (lambda: enqueue(c, task="producers.ad", args=[1]),
                            lambda: many(c, ["x"], task="producers.ad"),
                            lambda: unique(c, "x", "k2", task="producers.ad")):
                with pytest.raises(UnknownTaskName,
                                   match="did you mean 'producers.add'"):
                    run(refused())
        run(p.commit())
        rows = dict(query(db, "SELECT id, trace_context->>'traceparent' FROM tasks"))
        spans = {s.name: s for s in exporter.get_finished_spans()}
        trace_id = format(request.get_span_context().trace_id, "032x")
        for name, task_id in (("enqueue producers.add", ids["call"]),
                              ("enqueue producers.ad", ids["forced"])):
            span = spans[name]
            assert span.kind.name == "PRODUCER" and span.parent is not None
            assert span.parent.span_id == request.get_span_context().span_id
            assert span.attributes["messaging.message.id"] == str(task_id)
            assert rows[task_id].split("-")[1:3] == [trace_id, f"{span.context.span_id:016x}"]
        assert spans["enqueue taskworker.default"].parent.span_id == (  # (the last: unique)
            request.get_span_context().span_id)
        assert all(rows[i] is not None and rows[i].split("-")[1] == trace_id
                   for i in (*ids["many"], ids["unique"]))
        grouped = spans["enqueue group"]  # (one span for the workflow, its context on each row)
        assert grouped.parent.span_id == request.get_span_context().span_id
        assert {tuple(rows[i].split("-")[1:3]) for i in ids["flow"].task_ids} == {
            (trace_id, f"{grouped.context.span_id:016x}")}
        assert grouped.attributes["taskworker.workflow.id"] == ids["flow"].id
        assert grouped.attributes["messaging.destination.name"] == "sums"
        assert len([s for s in exporter.get_finished_spans()
                    if s.kind.name == "PRODUCER"]) == 5  # (nothing sent for a refusal)

        exporter.clear()
        run(p.begin())
        with pytest.raises(Exception, match="out of range"):  # the server's error
            run(enqueue(c, "late", delay=timedelta(days=999_999_999)))
        run(p.rollback())
        (failed,) = exporter.get_finished_spans()
        assert failed.status.status_code.name == "ERROR"
        assert [e.name for e in failed.events] == ["exception"]
        assert "out of range" in str(failed.events[0].attributes["exception.message"])
    finally:
        for close in p.closers:
            run(close())


def test_result_reads_through_every_producer(db_url: str, db: Any, add: Any,
                                             loop: asyncio.AbstractEventLoop) -> None:
    """`result` through each synchronous producer, `result_async` through each
    asynchronous one (Django's: test_django_connection_enqueues_in_transaction_atomic)."""
    task_id = add.enqueue(db, 1, b=2)
    db.commit()
    query(db, "UPDATE tasks SET status = 'done', return_value = '3' WHERE id = %s",
          (task_id,))
    db.commit()
    run = settled(loop)
    for make in PRODUCERS.values():
        p = make(db_url, loop)
        try:
            run(p.begin())
            read = taskworker.result_async if p.asynchronous else taskworker.result
            assert run(read(p.target, task_id)) == 3, make.__name__
            with pytest.raises(taskworker.UnknownTask):
                run(read(p.target, 10**12))
            run(p.rollback())
        finally:
            for close in p.closers:
                run(close())


def finish_once_awaited(db_url: str, task_id: int, value: str) -> threading.Thread:
    """A thread that ends the task (as a worker's outcome would: the trigger of
    migration 012 notifies the waiters) once someone waits for it."""
    def finish() -> None:
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        try:
            wait_until(lambda: query(conn, "SELECT awaited FROM tasks WHERE id = %s",
                                     (task_id,)) == [(True,)], 10, "the wait to mark the task")
            time.sleep(0.2)  # (the waiter asleep by now, most likely: woken by the NOTIFY)
            query(conn, "UPDATE tasks SET status = 'done', return_value = %s WHERE id = %s",
                  (value, task_id))
        finally:
            conn.close()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def psycopg3_waiter(db_url: str, loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    import psycopg

    conn = psycopg.connect(db_url)
    return conn, lambda: (conn.info.transaction_status.name, listening(conn.execute))


def psycopg3_async_waiter(db_url: str, loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    import psycopg

    conn = loop.run_until_complete(psycopg.AsyncConnection.connect(db_url))

    async def state() -> Any:
        cur = await conn.execute("SELECT pg_listening_channels()")
        channels = [r[0] for r in await cur.fetchall()]
        await conn.rollback()
        return conn.info.transaction_status.name, channels

    return conn, lambda: loop.run_until_complete(state())


def asyncpg_waiter(db_url: str, loop: asyncio.AbstractEventLoop) -> tuple[Any, Any]:
    import asyncpg

    conn = loop.run_until_complete(asyncpg.connect(db_url))

    async def state() -> Any:
        channels = [r[0] for r in await conn.fetch("SELECT pg_listening_channels()")]
        return "IDLE" if not conn.is_in_transaction() else "INTRANS", channels

    return conn, lambda: loop.run_until_complete(state())


def listening(execute: Callable[..., Any]) -> list[str]:
    channels = [r[0] for r in execute("SELECT pg_listening_channels()").fetchall()]
    execute("ROLLBACK")
    return channels


WAITERS = {f.__name__: f for f in (psycopg3_waiter, psycopg3_async_waiter, asyncpg_waiter)}


@pytest.mark.parametrize("make", WAITERS.values(), ids=list(WAITERS))
def test_wait_sleeps_on_psycopg3_and_asyncpg_until_the_outcome(
        make: Callable[..., tuple[Any, Any]], db_url: str, db: Any, add: Any,
        loop: asyncio.AbstractEventLoop) -> None:
    """`wait` on a psycopg 3 connection, `wait_async` on psycopg 3's async one
    and asyncpg's: woken by the outcome's NOTIFY, not by polling; the connection
    left idle and listening to nothing; a timeout, a transaction open, and
    another library's objects refused."""
    conn, state = make(db_url, loop)
    asynchronous = make is not psycopg3_waiter
    wait = ((lambda *a, **k: loop.run_until_complete(taskworker.wait_async(*a, **k)))
            if asynchronous else taskworker.wait)
    try:
        first, second = add.enqueue(db, 1), add.enqueue(db, 2)
        db.commit()
        with pytest.raises(taskworker.WaitTimeout, match=f"task {first} not finished"):
            wait(conn, first, timeout=0.2)
        assert state() == ("IDLE", [])
        finishing = finish_once_awaited(db_url, first, "11")
        started = time.monotonic()
        assert wait(conn, first, timeout=30) == 11
        assert time.monotonic() - started < 10
        finishing.join()
        finishing = finish_once_awaited(db_url, second, '"two"')
        assert wait(conn, [first, second], timeout=30) == [11, "two"]
        finishing.join()
        assert state() == ("IDLE", [])
    finally:
        if asynchronous:
            loop.run_until_complete(conn.close())
        else:
            conn.close()


def test_wait_refuses_what_it_cannot_listen_on(db_url: str, db: Any, add: Any,
                                              loop: asyncio.AbstractEventLoop) -> None:
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.orm import Session

    task_id = add.enqueue(db, 1)
    db.commit()
    engine = create_engine(driver_url(db_url, "psycopg"))
    async_engine = create_async_engine(driver_url(db_url, "asyncpg"))
    aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(db_url))
    try:
        with Session(engine) as session, pytest.raises(
                TypeError, match="^wait\\(\\) needs a psycopg2 or psycopg 3 connection of its "
                                 "own \\(it LISTENs and commits\\), not sqlalchemy.orm.session."
                                 "Session$"):
            taskworker.wait(session, task_id, timeout=1)
        with pytest.raises(TypeError, match="\\(asynchronous: await taskworker.wait_async"):
            taskworker.wait(aconn, task_id, timeout=1)

        async def refused() -> None:
            async with async_engine.connect() as alchemy:
                with pytest.raises(TypeError, match="^wait_async\\(\\) needs a psycopg 3 "
                                                    "AsyncConnection or an asyncpg connection"):
                    await taskworker.wait_async(alchemy, task_id, timeout=1)
            await aconn.execute("SELECT 1")  # a transaction is open
            with pytest.raises(RuntimeError, match="no transaction open"):
                await taskworker.wait_async(aconn, task_id, timeout=1)
            await aconn.rollback()

        loop.run_until_complete(refused())
        with psycopg.connect(db_url) as conn:
            conn.execute("SELECT 1")
            with pytest.raises(RuntimeError, match="no transaction open"):
                taskworker.wait(conn, task_id, timeout=1)
    finally:
        loop.run_until_complete(aconn.close())
        loop.run_until_complete(async_engine.dispose())
        engine.dispose()


def test_eager_mode_waits_and_reads_without_a_connection(
        add: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Under taskworker.testing.eager(), `wait`, `wait_async` and `result_async`
    answer from what ran, a None result included (no connection is looked at)."""
    @taskworker.task("producers.nothing")
    def nothing() -> None:
        return None

    with taskworker.testing.eager():
        none, three = nothing.enqueue(None), add.enqueue(None, 1, b=2)
        assert taskworker.wait(None, none) is None
        assert loop.run_until_complete(taskworker.wait_async(None, [none, three])) == [None, 3]
        assert loop.run_until_complete(taskworker.result_async(None, three)) == 3
