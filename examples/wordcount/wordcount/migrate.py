"""Create the example's table: `python -m wordcount.migrate` (DATABASE_URL as for
taskworker). Run `taskworker migrate` too, for the tasks table."""
from __future__ import annotations

import os
from pathlib import Path

import psycopg2

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/taskprocessor?sslmode=disable"


def main() -> None:
    schema = (Path(__file__).with_name("schema.sql")).read_text()
    conn = psycopg2.connect(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(schema)
    finally:
        conn.close()
    print("word_counts is ready")


if __name__ == "__main__":
    main()
