"""Enqueue one task per text file, from application code, in one transaction:

    python -m wordcount.submit notes.txt letter.txt          # the default handler
    python -m wordcount.submit --named notes.txt letter.txt  # wordcount.count
    python -m wordcount.submit --workflow notes.txt letter.txt

prints the task ids. Either every file becomes a task or (on any error) none
does: taskworker.enqueue joins the transaction of the connection it is given,
and the tasks appear to workers only when it commits. With --named, each file's
task is a call of `wordcount.count(text)` with the unique key "file:<absolute path>": while a
file's count is pending or running, submitting it again prints the same id.
With --workflow, the files go through a workflow enqueued in one call: per file
a chain (normalize, then words), the chains in a group whose callback
(summary) adds their counts up; it prints the workflow's id and the
callback's task id (`taskworker show ID`, `taskworker status --workflow ID`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2

import taskworker

from .migrate import DEFAULT_DATABASE_URL
from .tasks import count, normalize, summary, words


def main(args: list[str]) -> None:
    if args[:1] == ["--workflow"]:
        submit_workflow(args[1:])
        return
    named = args[:1] == ["--named"]
    paths = args[1:] if named else args
    texts = [Path(p).read_text(encoding="utf-8") for p in paths]
    conn = psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    try:
        with conn:  # commits on success, rolls back (no task at all) on an error
            if named:
                ids = [count.options(unique_key=f"file:{Path(path).resolve()}")
                       .enqueue(conn, text)
                       for path, text in zip(paths, texts, strict=True)]
            else:
                ids = taskworker.enqueue_many(conn, texts)
    finally:
        conn.close()
    for path, task_id in zip(paths, ids, strict=True):
        print(f"{task_id}\t{path}")


def submit_workflow(paths: list[str]) -> None:
    texts = [Path(p).read_text(encoding="utf-8") for p in paths]
    flow = taskworker.group(*(taskworker.chain(normalize.s(text), words.s())
                              for text in texts)).then(summary.s())
    conn = psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    try:
        with conn:  # every task of the workflow, or none
            run = flow.enqueue(conn)
    finally:
        conn.close()
    print(f"workflow\t{run.id}")
    print(f"summary\t{run.last[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
