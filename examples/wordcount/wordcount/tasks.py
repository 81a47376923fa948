"""The example's named tasks: three functions in two queues, started with one
command:

    taskworker serve --tasks wordcount.tasks

- `wordcount.count(text)` (queue "texts"): count one text's words, keep the
  count, and enqueue `wordcount.add(words)` in the same transaction. submit.py enqueues it
  with a unique key per file: submitting a file again while its count is pending
  or running returns the existing task instead of a second one.
- `wordcount.add` (queue "totals", max_running=1): add a count to the running
  total, in a transaction bound to the task (taskworker.transaction()): the
  update and the task's outcome commit together, so a count is added exactly
  once however often the task runs. At most one runs at a time across every
  process and host (the limit keeps the other workers free for counting).
- `wordcount.report` (queue "totals", periodic): every REPORT_EVERY (default 1m),
  once per tick however many processes serve it, record the total in
  word_reports and return it ({"total_words": N}, the task's return value).
- A workflow (submit.py --workflow): per file, a chain of `wordcount.normalize`
  (lower case, punctuation out) and `wordcount.words` (called with the
  normalized text), the chains in a group whose callback `wordcount.summary`
  gets every file's count once all are done. Pure functions: run twice, they
  return the same.

Each function opens its own connection (a psycopg2 connection serves one
greenlet at a time), or takes its task's bound one, and writes idempotently or
through the bound transaction: taskworker runs a task at least once.
"""
from __future__ import annotations

import os

import psycopg2

import taskworker

from .handlers import store_count
from .migrate import DEFAULT_DATABASE_URL

REPORT_EVERY = os.environ.get("REPORT_EVERY", "1m")


def connect() -> psycopg2.extensions.connection:
    return psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
                            application_name="wordcount")


@taskworker.task("wordcount.count", queue="texts", max_retries=3, retry_backoff="2s")
def count(text: str) -> int:
    """Count the words (as the plain handler does), then hand the count to `add`."""
    task = taskworker.current_task()
    assert task is not None  # (run by a worker, or by taskworker.testing.eager())
    words = store_count(task.id, text)
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            # A retry of this task enqueues `add` again only if the first one was
            # rolled back: the unique key is this task's id.
            add.options(unique_key=f"add-{task.id}").enqueue(cur, words)
    finally:
        conn.close()
    return words


@taskworker.task("wordcount.add", queue="totals", max_running=1)
def add(words: int) -> int:
    """Add one count to the total; return the total. The update and this task's
    outcome commit in one transaction (taskworker.transaction()): however often
    the task runs (a worker killed, a lease lost), the count is added once."""
    with taskworker.transaction() as conn, conn.cursor() as cur:
        cur.execute("UPDATE word_totals SET words = words + %s RETURNING words", (words,))
        return int(cur.fetchone()[0])


@taskworker.task("wordcount.report", queue="totals", every=REPORT_EVERY)
def report() -> dict[str, int]:
    """Record the total so far (a periodic run, called with no argument)."""
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO word_reports (words) SELECT words FROM word_totals "
                        "RETURNING words")
            return {"total_words": cur.fetchone()[0]}
    finally:
        conn.close()


@taskworker.task("wordcount.normalize", queue="texts")
def normalize(text: str) -> str:
    """The text in lower case, punctuation turned into spaces (a chain's first step)."""
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())


@taskworker.task("wordcount.words", queue="texts")
def words(text: str) -> int:
    """The number of words (a chain's second step: called with normalize's result)."""
    return len(text.split())


@taskworker.task("wordcount.summary", queue="totals")
def summary(counts: list[int]) -> dict[str, int]:
    """The group's callback: every file's count, in the order the files were given."""
    return {"files": len(counts), "words": sum(counts), "largest": max(counts, default=0)}
