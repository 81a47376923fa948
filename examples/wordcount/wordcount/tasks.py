"""The example's named tasks: three functions in two queues, started with one
command:

    taskworker serve --tasks wordcount.tasks

- `wordcount.count` (queue "texts"): count one text's words, keep the count, and
  enqueue `wordcount.add` for it in the same transaction. submit.py enqueues it
  with a unique key per file: submitting a file again while its count is pending
  or running returns the existing task instead of a second one.
- `wordcount.add` (queue "totals", max_running=1): add a count to the running
  total. At most one runs at a time across every process and host, so the
  read-modify-write of the single totals row never races (a lock would do too;
  the limit also keeps the other workers free for counting meanwhile).
- `wordcount.report` (queue "totals", periodic): every REPORT_EVERY (default 1m),
  once per tick however many processes serve it, record the total in
  word_reports.

Each function opens its own connection (a psycopg2 connection serves one
greenlet at a time) and writes idempotently: taskworker runs a task at least once.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psycopg2

import taskworker

from .handlers import count_words
from .migrate import DEFAULT_DATABASE_URL

if TYPE_CHECKING:
    from taskworker.handlers import TaskContext

REPORT_EVERY = os.environ.get("REPORT_EVERY", "1m")


def connect() -> psycopg2.extensions.connection:
    return psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
                            application_name="wordcount")


@taskworker.task("wordcount.count", queue="texts", max_retries=3, retry_backoff="2s")
def count(payload: str | None, task: TaskContext) -> str:
    """Count the words (as the plain handler does), then hand the count to `add`."""
    words = count_words(payload, task)
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            # A retry of this task enqueues `add` again only if the first one was
            # rolled back: the unique key is this task's id.
            taskworker.enqueue(cur, words, task=add, unique_key=f"add-{task.id}")
    finally:
        conn.close()
    return words


@taskworker.task("wordcount.add", queue="totals", max_running=1)
def add(payload: str, task: TaskContext) -> str:
    """Add one count to the total, once per counted text."""
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO word_totals_added (task_id) VALUES (%s) "
                        "ON CONFLICT DO NOTHING RETURNING task_id", (task.id,))
            if cur.fetchone():  # (a second run of the same task adds nothing)
                cur.execute("UPDATE word_totals SET words = words + %s RETURNING words",
                            (int(payload),))
            else:
                cur.execute("SELECT words FROM word_totals")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


@taskworker.task("wordcount.report", queue="totals", every=REPORT_EVERY)
def report(payload: str | None) -> str:
    """Record the total so far (a periodic run gets no payload)."""
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO word_reports (words) SELECT words FROM word_totals "
                        "RETURNING words")
            return f"total so far: {cur.fetchone()[0]} words"
    finally:
        conn.close()
