"""The claim statement never hands one task to two claimers.

Thousands of pending rows; several OS processes (plain psycopg2), one process
running many greenlets (gevent + psycogreen, one connection each) and several
threads of this process race with the `claim` statement from queries.sql, each
claimer under its own holder name, until the table is empty. Every row must be
claimed exactly once, by the claimer the row names, with attempts = 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import psycopg2
from claimer import claim_all

from taskworker.store import tasks
from taskworker.store.database import Direct

ROWS = 3000
PROCESSES = 3
GREENLETS = 8
THREADS = 4
CLAIMER = str(Path(__file__).resolve().parent / "claimer.py")


def test_claim_never_hands_a_task_to_two_claimers(db_url: str,
                                                  db: psycopg2.extensions.connection) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) SELECT 'task ' || n"
                    " FROM generate_series(1, %s) AS n", (ROWS,))
        cur.execute("SELECT array_agg(id) FROM tasks")
        all_ids = set(cur.fetchone()[0])
    assert len(all_ids) == ROWS

    commands = [["plain", db_url, f"proc-{n}", str(n * 3 + 1)] for n in range(PROCESSES)]
    commands.append(["green", db_url, "green", str(GREENLETS)])
    children = [subprocess.Popen([sys.executable, CLAIMER, *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
                for args in commands]
    claimed: dict[str, list[int]] = {}
    errors: list[Exception] = []
    go = threading.Event()

    def thread_claimer(n: int) -> None:
        holder = f"thread-{n}"
        try:
            claimed[holder] = claim_all(db_url, holder, 2 + n, go.wait)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_claimer, args=(n,)) for n in range(THREADS)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for t in threads:
            t.start()
        for child in children:  # everyone starts at (nearly) the same moment
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        go.set()
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0, out
            claimed.update(json.loads(out.strip().splitlines()[-1]))
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
    finally:
        go.set()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert not errors, errors

    assert len(claimed) == PROCESSES + GREENLETS + THREADS
    every_claim = [task_id for ids in claimed.values() for task_id in ids]
    twice = [task_id for task_id, n in Counter(every_claim).items() if n > 1]
    assert not twice, f"claimed more than once: {twice[:20]}"
    assert set(every_claim) == all_ids
    busy = [holder for holder, ids in claimed.items() if ids]
    assert len(busy) > 1, "only one claimer got anything: there was no race"

    with db.cursor() as cur:
        cur.execute("SELECT id, status, attempts, locked_by, locked_until > now() FROM tasks")
        rows = cur.fetchall()
    owner = {task_id: holder for holder, ids in claimed.items() for task_id in ids}
    for task_id, status, attempts, locked_by, leased in rows:
        assert (status, attempts, leased) == ("in_progress", 1, True), task_id
        assert locked_by == owner[task_id], task_id


def test_claim_takes_oldest_first_and_respects_limit(db_url: str,
                                                     db: psycopg2.extensions.connection) -> None:
    with db.cursor() as cur:
        cur.execute("INSERT INTO tasks (payload) SELECT 'task ' || n"
                    " FROM generate_series(1, 10) AS n")
        cur.execute("UPDATE tasks SET status = 'done' WHERE payload = 'task 1'")
        cur.execute("UPDATE tasks SET run_at = now() + interval '1 hour'"
                    " WHERE payload = 'task 2'")
    claim = tasks.claim(Direct(db), holder="me", limit=3, lease=30)
    got = sorted(c.task.payload for c in claim.rows)
    assert got == ["task 3", "task 4", "task 5"]  # not done, not due: skipped
