"""The tasks the bound phase runs (TASK_MODULES=benchmarks.bound_tasks): each
inserts one row of bench_effects, three ways (see benchmarks/bound.py)."""
import os
import threading

import psycopg2

import taskworker

_kept = threading.local()  # (greenlet-local under gevent's patching: one per worker)
INSERT = "INSERT INTO bench_effects (n) VALUES (%s)"


@taskworker.task("bench_bound")
def bench_bound(n):
    """The write and the task's outcome in one transaction (part 21)."""
    with taskworker.transaction() as conn, conn.cursor() as cur:
        cur.execute(INSERT, (n,))
    return n


@taskworker.task("bench_apart_connect")
def bench_apart_connect(n):
    """The way of the old README example (before part 21): a connection of its own per run,
    committed apart from the outcome."""
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(INSERT, (n,))
    finally:
        conn.close()
    return n


@taskworker.task("bench_apart_kept")
def bench_apart_kept(n):
    """A connection kept per worker greenlet, committed apart from the outcome."""
    conn = getattr(_kept, "conn", None)
    if conn is None or conn.closed:
        conn = _kept.conn = psycopg2.connect(os.environ["DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute(INSERT, (n,))
    return n
