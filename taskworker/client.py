"""Enqueue tasks from application code, inside the application's own transaction.

    import taskworker

    with conn:                                   # the application's psycopg2 connection
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders ...")
            send_receipt.enqueue(cur, 42, currency="EUR")  # same transaction as the order
            taskworker.enqueue(cur, "order 42")  # a text payload, for the default handler

    async with pool.acquire() as conn, conn.transaction():   # asyncpg, say
        await send_receipt.enqueue_async(conn, 42, currency="EUR")

The connection may be psycopg2's, psycopg 3's, SQLAlchemy's or Django's, and,
awaited through the `_async` forms, psycopg 3's, SQLAlchemy's or asyncpg's
asynchronous ones (drivers/ says which objects). Each enqueue is written once,
as steps (store.database.Steps) that a sync or an async connection runs.

The task exists only if the application commits: a rollback takes the task with
it, and workers cannot see it before the commit (the NOTIFY that wakes them is
sent at commit too). These functions never commit, roll back or change the
connection's settings; in autocommit mode each call is its own transaction.

This module imports neither gevent nor anything that patches: it works in a plain
blocking program, a threaded one, or under gevent alike.
"""
from __future__ import annotations

import difflib
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from . import codec, drivers, registry, tracing
from .settings import DEFAULT_MAX_PAYLOAD_BYTES
from .store import admin
from .store.database import Steps

BATCH_SIZE = 5000  # payloads per INSERT statement in enqueue_many
MAX_UNIQUE_KEY_BYTES = 1000  # a btree entry must fit a third of a page; keys are short anyway
UNIQUE_ROUNDS = 100  # enqueue_unique: insert-or-read rounds before giving up
PRIORITY_RANGE = range(-2**31, 2**31)  # the column is a PostgreSQL integer

RunAt = datetime | timedelta | None
Delay = timedelta | float | None  # a timedelta, or seconds
TaskRef = str | Callable[..., Any] | None  # a name, or a function decorated with @taskworker.task


class Enqueued(NamedTuple):
    """What `enqueue_unique` did."""

    id: int  # the task inserted, or the live task that holds the key
    inserted: bool  # False: a live task held the key and nothing was inserted
    status: str  # that task's status as read: 'pending' or 'in_progress'


def enqueue(conn_or_cursor: Any, payload: str | None = None, *, task: TaskRef = None,
            args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
            queue: str | None = None, priority: int | None = None, run_at: RunAt = None,
            delay: Delay = None, unique_key: str | None = None,
            concurrency_key: str | None = None,
            max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, force: bool = False) -> int:
    """Insert one pending task and return its id.

    `conn_or_cursor` is the application's connection or cursor: psycopg2's or
    psycopg 3's, an SQLAlchemy Connection or Session, or Django's connection (see
    drivers/); the insert joins its current transaction. `task` is the name of a
    task registered with @taskworker.task (or the decorated function itself);
    None runs the default handler. The task is called with the text `payload`,
    or with `args` and `kwargs` (JSON: see codec.py; checked against the
    function's signature when this process imported it;
    `send_email.enqueue(conn, ...)` is the same call, typed). `queue` and
    `priority` default to the registered task's, when this process has imported
    it, else to queue 'default' and priority 0. `run_at` is a timezone-aware
    datetime (or, as `delay`, a timedelta); `delay` a timedelta or seconds from
    the database's now(); neither: as soon as possible. `unique_key`: see
    `enqueue_unique` (this returns its id). `concurrency_key` (a call only): at
    most the task's max_running_per_key calls with that key run at once.
    `max_bytes`: the workers'
    MAX_PAYLOAD_BYTES (a larger payload raises ValueError; a worker would end the
    task in error without running it). A `task` name this process does not
    register raises UnknownTaskName when it registers others (a typo, with the
    nearest name); `force=True` enqueues it anyway (see `place`).
    """
    return drivers.run(conn_or_cursor, _enqueue(
        payload, task, args, kwargs,
        registry.Options(queue, priority, run_at, delay, unique_key, concurrency_key),
        max_bytes, force))


async def enqueue_async(conn: Any, payload: str | None = None, *, task: TaskRef = None,
                        args: Sequence[Any] | None = None,
                        kwargs: Mapping[str, Any] | None = None, queue: str | None = None,
                        priority: int | None = None, run_at: RunAt = None,
                        delay: Delay = None, unique_key: str | None = None,
                        concurrency_key: str | None = None,
                        max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                        force: bool = False) -> int:
    """`enqueue` in the transaction of an asynchronous connection: psycopg 3's
    AsyncConnection or AsyncCursor, SQLAlchemy's AsyncConnection or AsyncSession,
    or an asyncpg connection (see drivers/). The same checks and statements."""
    return await drivers.run_async(conn, _enqueue(
        payload, task, args, kwargs,
        registry.Options(queue, priority, run_at, delay, unique_key, concurrency_key),
        max_bytes, force))


def _enqueue(payload: str | None, task: TaskRef, args: Sequence[Any] | None,
             kwargs: Mapping[str, Any] | None, options: registry.Options, max_bytes: int,
             force: bool) -> Steps[int]:
    """What `enqueue` and `enqueue_async` send (see database.Steps)."""
    if args is not None or kwargs is not None:
        if payload is not None:
            raise TypeError("give a payload or args/kwargs, not both")
        if task is None:
            raise TypeError("args and kwargs call a registered task: name it with task=")
        if args is not None and not isinstance(args, (list, tuple)):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        done = yield from call(task, args or (), kwargs or {}, options, max_bytes, force)
        return done.id
    if payload is None:
        raise TypeError("enqueue() needs a payload, or args/kwargs for a registered task")
    if options.concurrency_key is not None:
        raise TypeError("a concurrency_key goes with a call: give args/kwargs, not a payload")
    o = options
    if o.unique_key is not None:
        unique = yield from _unique_payload(payload, o.unique_key, task, o.queue, o.priority,
                                            o.run_at, o.delay, max_bytes, force)
        return unique.id
    ids = yield from _many([payload], task, o.queue, o.priority, o.run_at, o.delay,
                           BATCH_SIZE, max_bytes, force)
    return ids[0]


def enqueue_call(conn_or_cursor: Any, task: TaskRef, args: Sequence[Any],
                 kwargs: Mapping[str, Any], options: registry.Options = registry.NO_OPTIONS,
                 max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, force: bool = False) -> int:
    """Insert one pending task that calls `task` with `args` and `kwargs`; its
    id. What `Task.enqueue` and `enqueue(..., args=...)` send: see `call`."""
    return drivers.run(conn_or_cursor, call(task, args, kwargs, options, max_bytes, force)).id


async def enqueue_call_async(conn: Any, task: TaskRef, args: Sequence[Any],
                             kwargs: Mapping[str, Any],
                             options: registry.Options = registry.NO_OPTIONS,
                             max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                             force: bool = False) -> int:
    """`enqueue_call` on an asynchronous connection (`Task.enqueue_async`)."""
    done = await drivers.run_async(conn, call(task, args, kwargs, options, max_bytes, force))
    return done.id


def enqueue_call_unique(conn_or_cursor: Any, task: TaskRef, args: Sequence[Any],
                        kwargs: Mapping[str, Any],
                        options: registry.Options = registry.NO_OPTIONS,
                        max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                        force: bool = False) -> Enqueued:
    """`enqueue_call`, saying what it did as `enqueue_unique` does: with
    `options.unique_key`, whether the task was inserted or a live task holds the
    key (its id and status); without, always inserted (`taskworker enqueue
    --args --unique-key` says which on stderr)."""
    return drivers.run(conn_or_cursor, call(task, args, kwargs, options, max_bytes, force))


def call(task: TaskRef, args: Sequence[Any], kwargs: Mapping[str, Any],
         options: registry.Options, max_bytes: int, force: bool) -> Steps[Enqueued]:
    """The steps of one call of a registered task: checked against the
    function's signature (when this process registered it) and against what
    JSON can carry before anything is sent. Under `taskworker.testing.eager()`,
    runs it here instead and sends nothing (see testing.py)."""
    name = task_name(task)
    if name is None:
        raise TypeError("a call needs a registered task")
    known = registry.get(name)
    if known is not None:
        registry.check_call(known, args, kwargs)
    arguments = codec.encode_call(args, kwargs, f"{name}()")
    if len(arguments) > max_bytes // 4 and (size := len(arguments.encode())) > max_bytes:
        raise ValueError(f"{name}(): arguments are {size} bytes of JSON, over "
                         f"MAX_PAYLOAD_BYTES={max_bytes}")
    placement = place(name, options.queue, options.priority, options.run_at, options.delay,
                      force)
    if options.concurrency_key is not None:
        check_unique_key(options.concurrency_key, "concurrency_key")
        if known is not None and known.max_running_per_key is None:
            raise ValueError(f"{name}(): a concurrency_key needs the task's "
                             f"max_running_per_key (@taskworker.task(max_running_per_key=N))")
        placement = placement._replace(concurrency_key=options.concurrency_key)
    eager = _eager()
    if eager is not None:
        return Enqueued(eager.enqueued(name, arguments, placement, options.unique_key), True,
                        "pending")
    with tracing.producing(placement) as span:  # (a PRODUCER span, with OpenTelemetry)
        if options.unique_key is None:
            ids = yield from admin.enqueue([], span.placement, arguments=[arguments])
            done = Enqueued(ids[0], True, "pending")
        else:
            done = yield from _unique(None, arguments, options.unique_key, span.placement)
        span.sent([done.id])
        return done


def enqueue_many(conn_or_cursor: Any, payloads: Iterable[str], *, task: TaskRef = None,
                 queue: str | None = None, priority: int | None = None, run_at: RunAt = None,
                 delay: Delay = None, batch_size: int = BATCH_SIZE,
                 max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, force: bool = False) -> list[int]:
    """Insert one pending task per payload; return their ids in the payloads' order.

    One INSERT statement per `batch_size` payloads, all in the caller's
    transaction (`conn_or_cursor`: as for `enqueue`). The options apply to every
    task (see `enqueue`); a unique key belongs to one task, so there is none
    here: call `enqueue` for each. A payload that cannot be stored (not a str, a
    NUL character, over `max_bytes`) raises TypeError or ValueError before
    anything of its batch is sent.
    """
    return drivers.run(conn_or_cursor, _many(payloads, task, queue, priority, run_at, delay,
                                             batch_size, max_bytes, force))


async def enqueue_many_async(conn: Any, payloads: Iterable[str], *, task: TaskRef = None,
                             queue: str | None = None, priority: int | None = None,
                             run_at: RunAt = None, delay: Delay = None,
                             batch_size: int = BATCH_SIZE,
                             max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                             force: bool = False) -> list[int]:
    """`enqueue_many` on an asynchronous connection (see `enqueue_async`)."""
    return await drivers.run_async(conn, _many(payloads, task, queue, priority, run_at, delay,
                                               batch_size, max_bytes, force))


def _many(payloads: Iterable[str], task: TaskRef, queue: str | None, priority: int | None,
          run_at: RunAt, delay: Delay, batch_size: int, max_bytes: int,
          force: bool) -> Steps[list[int]]:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    placement = place(task, queue, priority, run_at, delay, force)
    eager = _eager()
    if eager is not None and placement.task is not None:
        checked = list(payloads)
        for payload in checked:
            check_payload(payload, max_bytes)
        return [eager.enqueued(placement.task, None, placement, payload=p) for p in checked]
    ids: list[int] = []
    it = iter(payloads)
    with tracing.producing(placement) as span:  # (a PRODUCER span, with OpenTelemetry)
        while batch := list(itertools.islice(it, batch_size)):
            for payload in batch:
                check_payload(payload, max_bytes)
            ids.extend((yield from admin.enqueue(batch, span.placement)))
        span.sent(ids)
    return ids


def enqueue_unique(conn_or_cursor: Any, payload: str, unique_key: str, *, task: TaskRef = None,
                   queue: str | None = None, priority: int | None = None,
                   run_at: RunAt = None, delay: Delay = None,
                   max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, force: bool = False) -> Enqueued:
    """Insert one task with `unique_key`, unless a live task (pending, waiting for
    a retry included, or running) holds the key: then insert nothing and return
    that task's id, with inserted=False. Options as for `enqueue`.

    Race-free across concurrent enqueuers: the partial unique index decides, and
    an insert that conflicts with a row of a transaction not yet committed waits
    for that transaction. No row is locked: insert with DO NOTHING, then read the
    holder; if it finished in between, try again. A key this transaction inserted
    earlier is held too (its own row is visible to it). Under REPEATABLE READ or
    SERIALIZABLE, a holder committed after the transaction's snapshot raises the
    driver's serialization failure: run the transaction again.
    """
    return drivers.run(conn_or_cursor, _unique_payload(payload, unique_key, task, queue,
                                                       priority, run_at, delay, max_bytes,
                                                       force))


async def enqueue_unique_async(conn: Any, payload: str, unique_key: str, *,
                               task: TaskRef = None, queue: str | None = None,
                               priority: int | None = None, run_at: RunAt = None,
                               delay: Delay = None, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                               force: bool = False) -> Enqueued:
    """`enqueue_unique` on an asynchronous connection (see `enqueue_async`)."""
    return await drivers.run_async(conn, _unique_payload(payload, unique_key, task, queue,
                                                         priority, run_at, delay, max_bytes,
                                                         force))


def _unique_payload(payload: str, unique_key: str, task: TaskRef, queue: str | None,
                    priority: int | None, run_at: RunAt, delay: Delay, max_bytes: int,
                    force: bool) -> Steps[Enqueued]:
    check_payload(payload, max_bytes)
    placement = place(task, queue, priority, run_at, delay, force)
    eager = _eager()
    if eager is not None and placement.task is not None:
        check_unique_key(unique_key)
        return Enqueued(eager.enqueued(placement.task, None, placement, payload=payload),
                        True, "pending")
    with tracing.producing(placement) as span:  # (a PRODUCER span, with OpenTelemetry)
        done = yield from _unique(payload, None, unique_key, span.placement)
        span.sent([done.id])
        return done


def _unique(payload: str | None, arguments: str | None, unique_key: str,
            placement: admin.Placement) -> Steps[Enqueued]:
    check_unique_key(unique_key)
    for _ in range(UNIQUE_ROUNDS):
        task_id = yield from admin.enqueue_unique(payload, unique_key, placement, arguments)
        if task_id is not None:
            return Enqueued(task_id, True, "pending")
        holder = yield from admin.unique_holder(unique_key)
        if holder is not None:
            return Enqueued(holder[0], False, holder[1])
    raise RuntimeError(f"unique key {unique_key!r}: its tasks kept finishing between the "
                       f"insert and the read, {UNIQUE_ROUNDS} times")


def _eager() -> Any:
    """The eager runner of `taskworker.testing.eager()`, if one is active. None
    while `taskworker.testing` was never imported: no eager() can be active, and
    an import statement per enqueue costs as much as the rest of its checks."""
    testing = sys.modules.get("taskworker.testing")
    return None if testing is None else testing.active()


def place(task: TaskRef, queue: str | None, priority: int | None, run_at: RunAt,
          delay: Delay, force: bool = False) -> admin.Placement:
    """The checked columns of an enqueue, queue and priority filled in order: the
    argument, else the registered task's (if this process imported it), else the
    defaults. Raises TypeError or ValueError (the message is for the user).

    A name this process does not know is refused when it registered tasks (a
    typo would sit pending, claimed by nobody, or land in the wrong queue):
    `force` enqueues it anyway, for a process that registers it. A process that
    registered none cannot tell: a warning says so, once per name."""
    name = task_name(task)
    known = registry.get(name) if name is not None else None
    if name is not None and known is None:
        unknown(name, force)
    if queue is None:
        queue = known.queue if known is not None and known.queue is not None else "default"
    registry.check_name(queue, "queue")
    if priority is None:
        priority = known.priority if known is not None and known.priority is not None else 0
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if priority not in PRIORITY_RANGE:
        raise ValueError(f"priority {priority} is out of range ({PRIORITY_RANGE.start} to "
                         f"{PRIORITY_RANGE.stop - 1})")
    when, after = _schedule(run_at, delay)
    return admin.Placement(name, queue, priority, when, after)


_unchecked: set[str] = set()  # names already warned about (see unknown)


class UnknownTaskName(ValueError):
    """An enqueue names a task this process does not register."""


def unknown(name: str, force: bool) -> None:
    """A name this process has no task for: refused (with the nearest registered
    name) if it registered any; else a warning, once per name. `force`: the
    caller takes it upon itself (neither)."""
    if force:
        return
    names = registry.registered()
    if names:
        near = difflib.get_close_matches(name, list(names), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UnknownTaskName(f"no task {name!r} is registered in this process{hint} "
                              "(force=True enqueues it anyway, for a process that has it)")
    if not names and name not in _unchecked:
        _unchecked.add(name)
        warnings.warn(f"taskworker: task {name!r} could not be checked (this process "
                      "registered no task): its name, and the queue and priority it "
                      "declares, are not known here", UnknownTaskWarning,
                      stacklevel=_caller_level())


def _caller_level() -> int:
    """The warnings stacklevel of the first frame outside this package (the
    application's line that enqueued)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


class UnknownTaskWarning(UserWarning):
    """An enqueue names a task that could not be checked (no task registered here)."""


def task_name(task: TaskRef) -> str | None:
    """The name a `task=` argument stands for (checked), or None (default handler)."""
    if task is None:
        return None
    if not isinstance(task, str):
        name = getattr(task, "task_name", None)
        if not isinstance(name, str):
            raise TypeError("task must be a task name or a function decorated with "
                            f"@taskworker.task, not {type(task).__name__}")
        task = name
    registry.check_name(task, "task")
    return task


def check_unique_key(key: object, label: str = "unique_key") -> None:
    """Raise TypeError or ValueError unless `key` can be a unique key (or, with
    `label`, another key kept in an index: concurrency_key)."""
    if not isinstance(key, str):
        raise TypeError(f"{label} must be str, not {type(key).__name__}")
    if not key or "\x00" in key:
        raise ValueError(f"{label} must be a non-empty text without NUL characters")
    if (size := len(key.encode("utf-8"))) > MAX_UNIQUE_KEY_BYTES:
        raise ValueError(f"{label} is {size} bytes, over {MAX_UNIQUE_KEY_BYTES}")


def check_payload(payload: object, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
    """Raise TypeError or ValueError (the message is for the user) unless
    `payload` can be stored and run: text PostgreSQL can hold, within `max_bytes`."""
    if not isinstance(payload, str):
        raise TypeError(f"payload must be str, not {type(payload).__name__}")
    if "\x00" in payload:
        raise ValueError("payload contains a NUL character, which PostgreSQL text cannot hold")
    if len(payload) > max_bytes // 4 and (size := len(payload.encode("utf-8"))) > max_bytes:
        raise ValueError(f"payload is {size} bytes, over MAX_PAYLOAD_BYTES={max_bytes}")


def _schedule(run_at: RunAt, delay: Delay) -> tuple[datetime | None, timedelta | None]:
    """(absolute time, delay) parameters of the insert; at most one is set."""
    if delay is not None:
        if run_at is not None:
            raise ValueError("give run_at or delay, not both")
        if isinstance(delay, (int, float)) and not isinstance(delay, bool):
            delay = timedelta(seconds=delay)
        if not isinstance(delay, timedelta):
            raise TypeError(f"delay must be a timedelta or seconds, not {type(delay).__name__}")
        if delay < timedelta(0):
            raise ValueError("delay must not be negative")
        return None, delay
    if run_at is None:
        return None, None
    if isinstance(run_at, datetime):
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError("run_at must be timezone-aware (a naive datetime is ambiguous)")
        return run_at, None
    if isinstance(run_at, timedelta):
        return None, run_at
    raise TypeError(f"run_at must be a datetime, a timedelta or None, "
                    f"not {type(run_at).__name__}")
