"""Enqueue throughput from each producer (part 16, "Speed"): taskworker's enqueue
against a plain INSERT through the same driver, in the same run.

Producers: psycopg2, psycopg 3, SQLAlchemy 2 (a Session on psycopg), Django's
connection (psycopg), psycopg 3 async, SQLAlchemy AsyncConnection (asyncpg) and
asyncpg. Two workloads each:
  singles  N tasks, one per transaction: `taskworker.enqueue(conn, payload)` and a
           commit, against `INSERT INTO tasks (payload) VALUES (...) RETURNING id`
           and a commit (the application keeps the id either way)
  batch    M tasks in one transaction: `taskworker.enqueue_many(conn, payloads)`
           (one INSERT per 5,000, ids returned in order), against the plain
           multi-row INSERT an application would write: `INSERT INTO tasks
           (payload) SELECT unnest(...)` per 5,000, no ids returned
Runs are interleaved (every producer, workload and side once per round, the
order rotated round by round), the table emptied before each, and medians
compared: target taskworker / plain >= 0.8 for each producer and workload.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import taskworker

from .databases import connect, execute

TARGET = 0.8
BATCH = 5000
PLAIN_ONE = "INSERT INTO tasks (payload) VALUES ({p}) RETURNING id"
PLAIN_MANY = "INSERT INTO tasks (payload) SELECT unnest({p}::text[])"


@dataclass
class Producers:
    singles: int
    batch: int
    rounds: int
    rates: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, producer: str, workload: str, side: str) -> float | None:
        values = self.rates.get((producer, workload, side))
        return statistics.median(values) if values else None


class Sync:
    """A synchronous producer: its connection, how it commits, how it runs a
    plain statement with one parameter (written `{p}`)."""

    def __init__(self, conn: Any, commit: Callable[[], Any],
                 plain: Callable[[str, Any], Any], close: Callable[[], Any]) -> None:
        self.conn, self.commit, self.plain, self.close = conn, commit, plain, close

    def run(self, workload: str, side: str, payloads: list[str]) -> None:
        if workload == "singles":
            for p in payloads:
                if side == "taskworker":
                    taskworker.enqueue(self.conn, p)
                else:
                    self.plain(PLAIN_ONE, p)
                self.commit()
            return
        if side == "taskworker":
            taskworker.enqueue_many(self.conn, payloads)
        else:
            for i in range(0, len(payloads), BATCH):
                self.plain(PLAIN_MANY, payloads[i:i + BATCH])
        self.commit()


class Async(Sync):
    """An asynchronous producer, run on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Any,
                 commit: Callable[[], Any], plain: Callable[[str, Any], Any],
                 close: Callable[[], Any], begin: Callable[[], Any] | None = None) -> None:
        super().__init__(conn, commit, plain, close)
        self.loop, self.begin = loop, begin

    def run(self, workload: str, side: str, payloads: list[str]) -> None:
        self.loop.run_until_complete(self._run(workload, side, payloads))

    async def _run(self, workload: str, side: str, payloads: list[str]) -> None:
        chunks = [[p] for p in payloads] if workload == "singles" else [payloads]
        for chunk in chunks:
            if self.begin is not None:
                await self.begin()
            if side == "taskworker" and workload == "singles":
                await taskworker.enqueue_async(self.conn, chunk[0])
            elif side == "taskworker":
                await taskworker.enqueue_many_async(self.conn, chunk)
            elif workload == "singles":
                await self.plain(PLAIN_ONE, chunk[0])
            else:
                for i in range(0, len(chunk), BATCH):
                    await self.plain(PLAIN_MANY, chunk[i:i + BATCH])
            await self.commit()


def _psycopg2(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    conn = connect(url)
    conn.autocommit = False

    def plain(statement: str, value: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(statement.format(p="%s"), (value,))

    return Sync(conn, conn.commit, plain, conn.close)


def _psycopg3(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    import psycopg

    conn = psycopg.connect(url)
    return Sync(conn, conn.commit,
                lambda statement, value: conn.execute(statement.format(p="%s"), (value,)),
                conn.close)


def _sqlalchemy(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    session = Session(engine)
    plain = {s: text(s.format(p="(:p)")) for s in (PLAIN_ONE, PLAIN_MANY)}
    return Sync(session, session.commit,
                lambda statement, value: session.execute(plain[statement], {"p": value}),
                lambda: (session.close(), engine.dispose()))


def _django(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    from urllib.parse import urlsplit

    import django
    from django.conf import settings

    if not settings.configured:
        u = urlsplit(url)
        settings.configure(DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": u.path[1:], "USER": u.username,
            "PASSWORD": u.password or "", "HOST": u.hostname, "PORT": u.port or 5432}})
        django.setup()
    from django.db import connection

    connection.set_autocommit(False)  # (each run commits, as transaction.atomic would)

    def plain(statement: str, value: Any) -> None:
        with connection.cursor() as cur:
            cur.execute(statement.format(p="%s"), [value])

    return Sync(connection, connection.commit, plain,
                lambda: (connection.set_autocommit(True), connection.close()))


def _psycopg3_async(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    import psycopg

    conn = loop.run_until_complete(psycopg.AsyncConnection.connect(url))
    return Async(loop, conn, conn.commit,
                 lambda statement, value: conn.execute(statement.format(p="%s"), (value,)),
                 lambda: loop.run_until_complete(conn.close()))


def _sqlalchemy_async(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    conn = loop.run_until_complete(engine.connect())
    plain = {s: text(s.format(p="(:p)")) for s in (PLAIN_ONE, PLAIN_MANY)}
    return Async(loop, conn, conn.commit,
                 lambda statement, value: conn.execute(plain[statement], {"p": value}),
                 lambda: (loop.run_until_complete(conn.close()),
                          loop.run_until_complete(engine.dispose())))


def _asyncpg(url: str, loop: asyncio.AbstractEventLoop) -> Sync:
    import asyncpg

    conn = loop.run_until_complete(asyncpg.connect(url))
    transaction: list[Any] = []

    async def begin() -> None:
        transaction[:] = [conn.transaction()]
        await transaction[0].start()

    return Async(loop, conn, lambda: transaction[0].commit(),
                 lambda statement, value: conn.fetch(statement.format(p="$1"), value),
                 lambda: loop.run_until_complete(conn.close()), begin)


PRODUCERS: dict[str, Callable[[str, asyncio.AbstractEventLoop], Sync]] = {
    "psycopg2": _psycopg2, "psycopg 3": _psycopg3, "SQLAlchemy Session": _sqlalchemy,
    "Django connection": _django, "psycopg 3 async": _psycopg3_async,
    "SQLAlchemy async (asyncpg)": _sqlalchemy_async, "asyncpg": _asyncpg}




def measure(url: str, singles: int, batch: int, rounds: int,
            say: Callable[[str], None]) -> Producers:
    result = Producers(singles, batch, rounds)
    loop = asyncio.new_event_loop()
    producers = {}
    for name, make in PRODUCERS.items():
        try:
            producers[name] = make(url, loop)
        except ImportError as exc:
            result.notes.append(f"{name}: not installed ({exc.name}), skipped")
    jobs = [(name, workload, side) for name in producers for workload in ("singles", "batch")
            for side in ("plain", "taskworker")]
    try:
        for r in range(rounds):
            shift = r * 3 % len(jobs)
            for name, workload, side in jobs[shift:] + jobs[:shift]:
                n = singles if workload == "singles" else batch
                payloads = [f"task {i}" for i in range(n)]
                execute(url, "TRUNCATE tasks")
                say(f"producers: {name}, {workload} ({n:,}), {side} (round {r + 1}/{rounds})")
                started = time.perf_counter()
                producers[name].run(workload, side, payloads)
                rate = n / (time.perf_counter() - started)
                result.rates.setdefault((name, workload, side), []).append(rate)
    finally:
        for p in producers.values():
            p.close()
        loop.close()
    return result


def report(p: Producers) -> list[str]:
    lines = [f"Enqueue throughput by producer (benchmarks/producers.py): {p.singles:,} tasks one "
             f"per transaction (singles), {p.batch:,} in one enqueue_many (batch), against a "
             f"plain INSERT through the same driver; {p.rounds} interleaved rounds, medians, "
             "tasks/s", "",
             f"| producer | workload | plain | taskworker | ratio (target >= {TARGET:g}) "
             "| plain, each run | taskworker, each run |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for name in PRODUCERS:
        for workload in ("singles", "batch"):
            plain, ours = (p.median(name, workload, s) for s in ("plain", "taskworker"))
            if plain is None or ours is None:
                continue
            each = [", ".join(f"{v:,.0f}" for v in p.rates[(name, workload, s)])
                    for s in ("plain", "taskworker")]
            ratio = ours / plain
            lines.append(f"| {name} | {workload} | {plain:,.0f} | {ours:,.0f} | "
                         f"{ratio:.2f}{'' if ratio >= TARGET else ' (NOT met)'} | {each[0]} | "
                         f"{each[1]} |")
    return [*lines, *(f"- {note}" for note in p.notes)]
