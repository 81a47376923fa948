"""Enqueue one task per text file, from application code, in one transaction:

    python -m wordcount.submit notes.txt letter.txt

prints the task ids. Either every file becomes a task or (on any error) none
does: taskworker.enqueue_many joins the transaction of the connection it is
given, and the tasks appear to workers only when it commits.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg2

import taskworker

from .migrate import DEFAULT_DATABASE_URL


def main(paths: list[str]) -> None:
    texts = [Path(p).read_text(encoding="utf-8") for p in paths]
    conn = psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    try:
        with conn:  # commits on success, rolls back (no task at all) on an error
            ids = taskworker.enqueue_many(conn, texts)
    finally:
        conn.close()
    for path, task_id in zip(paths, ids, strict=True):
        print(f"{task_id}\t{path}")


if __name__ == "__main__":
    main(sys.argv[1:])
