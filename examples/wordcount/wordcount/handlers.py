"""The handler: count the words of a task's payload, keep the count in the
word_counts table, and return it as the task's result.

    TASK_HANDLER=wordcount.handlers:count_words taskworker serve

It runs inside `taskworker serve`, in a worker greenlet, after taskworker has
made sockets and psycopg2 cooperative: a query here lets the other workers run
meanwhile. Two rules follow from that:

- One connection per call. A psycopg2 connection serves one greenlet at a time,
  so connections are never shared between workers (opening one per task costs a
  few milliseconds; a busy handler could keep one per worker greenlet instead).
- Write idempotently. taskworker runs a task at least once: if the process dies
  after this commit but before the task is marked done, another process runs it
  again. The upsert makes the second run land on the same row.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psycopg2

from .migrate import DEFAULT_DATABASE_URL

if TYPE_CHECKING:
    from taskworker.handlers import TaskContext

UPSERT = """
INSERT INTO word_counts (task_id, words) VALUES (%(task_id)s, %(words)s)
ON CONFLICT (task_id) DO UPDATE SET words = EXCLUDED.words, counted_at = now()
"""


def count_words(payload: str | None, task: TaskContext) -> str:
    """Store and return the number of whitespace-separated words in `payload`."""
    if payload is None:
        raise ValueError("no text to count (the payload is NULL)")  # ends the task in error
    return str(store_count(task.id, payload))


def store_count(task_id: int, text: str) -> int:
    """Count the words of `text`, keep the count under the task's id, return it
    (the named task wordcount.count does the same with its argument)."""
    words = len(text.split())
    # The application's own database setting: taskworker does not hand its
    # connection string (and password) to handlers.
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    conn = psycopg2.connect(url, application_name="wordcount")
    try:
        with conn, conn.cursor() as cur:  # one transaction: commit, or roll back on error
            cur.execute(UPSERT, {"task_id": task_id, "words": words})
    finally:
        conn.close()
    return words
