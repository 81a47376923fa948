"""Enqueue tasks from application code, inside the application's own transaction.

    import taskworker

    with conn:                                   # the application's psycopg2 connection
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders ...")
            taskworker.enqueue(cur, "order 42")  # same transaction as the order row

The task exists only if the application commits: a rollback takes the task with
it, and workers cannot see it before the commit (the NOTIFY that wakes them is
sent at commit too). These functions never commit, roll back or change the
connection's settings; in autocommit mode each call is its own transaction.

This module imports neither gevent nor anything that patches: it works in a plain
blocking program, a threaded one, or under gevent alike.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from .settings import DEFAULT_MAX_PAYLOAD_BYTES
from .store import admin
from .store.database import Direct

BATCH_SIZE = 5000  # payloads per INSERT statement in enqueue_many

RunAt = datetime | timedelta | None


def enqueue(conn_or_cursor: Any, payload: str, *, run_at: RunAt = None,
            max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> int:
    """Insert one pending task and return its id.

    `conn_or_cursor` is a psycopg2 connection or cursor; the insert joins its
    current transaction. `run_at` delays the task: a timezone-aware datetime, or
    a timedelta counted from the database's now(); None means as soon as possible.
    `max_bytes`: the workers' MAX_PAYLOAD_BYTES (a larger payload raises
    ValueError; a worker would end the task in error without running it).
    """
    return enqueue_many(conn_or_cursor, [payload], run_at=run_at, max_bytes=max_bytes)[0]


def enqueue_many(conn_or_cursor: Any, payloads: Iterable[str], *, run_at: RunAt = None,
                 batch_size: int = BATCH_SIZE,
                 max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> list[int]:
    """Insert one pending task per payload; return their ids in the payloads' order.

    One INSERT statement per `batch_size` payloads, all in the caller's
    transaction. `run_at` and `max_bytes` apply to every task (see `enqueue`). A
    payload that cannot be stored (not a str, a NUL character, over `max_bytes`)
    raises TypeError or ValueError before anything of its batch is sent.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    when, delay = _schedule(run_at)
    db = Direct(conn_or_cursor)
    ids: list[int] = []
    it = iter(payloads)
    while batch := list(itertools.islice(it, batch_size)):
        for payload in batch:
            check_payload(payload, max_bytes)
        ids.extend(admin.enqueue(db, batch, run_at=when, delay=delay))
    return ids


def check_payload(payload: object, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
    """Raise TypeError or ValueError (the message is for the user) unless
    `payload` can be stored and run: text PostgreSQL can hold, within `max_bytes`."""
    if not isinstance(payload, str):
        raise TypeError(f"payload must be str, not {type(payload).__name__}")
    if "\x00" in payload:
        raise ValueError("payload contains a NUL character, which PostgreSQL text cannot hold")
    if len(payload) > max_bytes // 4 and (size := len(payload.encode("utf-8"))) > max_bytes:
        raise ValueError(f"payload is {size} bytes, over MAX_PAYLOAD_BYTES={max_bytes}")


def _schedule(run_at: RunAt) -> tuple[datetime | None, timedelta | None]:
    """(absolute time, delay) parameters of the insert; at most one is set."""
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
