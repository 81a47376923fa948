"""Part 20, item 1: inserts notify only while some process sleeps (migration 018),
and no wake-up is lost for it.

A process marks its row in taskworker_processes `asleep` (under advisory lock
7261835002, tried) before it looks at the table a last time, and clears it while
its claims come back full; the insert trigger takes the lock shared and notifies
only when a row says asleep. The tests:

- every interleaving of a producer's insert and commit with a sleeper's mark and
  last claim, under READ COMMITTED and REPEATABLE READ, stepped one statement at
  a time on real connections: the sleeper finds the row, or its mark was refused
  (it polls and marks again), or a notification comes;
- a real serve raced against inserts many times (FETCH_INTERVAL=60: a lost
  wake-up would leave a task waiting a minute);
- a listener that stopped reading holds the notification queue back past
  taskworker.notify_queue_limit: the insert still commits, and an idle serve
  still runs the task (its listener finds the queue full and its fetcher polls);
- the row of a process that knows nothing of the mark (a rolling deploy's older
  version) always asks for a notification; an awake process does not.
"""
from __future__ import annotations

import itertools
import random
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from invariants import insert_tasks, query, wait_until
from proc import ServeFactory

from taskworker.store import processes
from taskworker.store.database import Direct

CHANNEL = "taskworker_tasks"
IDLE = {"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0", "TASK_FAILURE_RATE": "0",
        "FETCH_INTERVAL": "60", "LOG_LEVEL": "INFO"}
WAKE_BOUND = 15.0  # seconds: functional (a NOTIFY takes milliseconds, a poll a minute)


def register(db: Any, holder: str, listens: bool) -> None:
    processes.register(Direct(db), holder=holder, host="h", pid=1, queues=None, tasks=[],
                       default_handler=True, schedules={}, lease_seconds=30)
    if not listens:
        processes.awake(Direct(db), holder)


class Listener:
    """A LISTEN connection that says which notifications came before a marker."""

    def __init__(self, url: str, notifier: Any) -> None:
        self.conn = psycopg2.connect(url, connect_timeout=10)
        self.conn.autocommit = True
        self.notifier = notifier
        query(self.conn, f"LISTEN {CHANNEL}")

    def since_last(self, marker: str) -> list[Any]:
        """The wake-ups that came before `marker`, which this sends now:
        notifications arrive in commit order, so once it is here every
        notification committed before it is too."""
        query(self.notifier, "SELECT pg_notify(%s, %s)", (CHANNEL, marker))
        got: list[Any] = []

        def came() -> bool:
            if select.select([self.conn], [], [], 0.05)[0]:
                self.conn.poll()
                got.extend(self.conn.notifies)
                self.conn.notifies.clear()
            return any(n.payload == marker for n in got)

        wait_until(came, 30, f"the notification {marker!r}", interval=0)
        return [n for n in got if n.payload != marker]


@pytest.fixture
def listener(db_url: str, db: Any) -> Iterator[Listener]:
    lst = Listener(db_url, db)
    try:
        yield lst
    finally:
        lst.conn.close()


# --- every interleaving, one statement at a time


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_no_interleaving_of_a_last_claim_and_an_insert_loses_the_wake_up(
        db_url: str, db: Any, listener: Listener, isolation: str) -> None:
    register(db, "sleeper", listens=False)
    sleeper = psycopg2.connect(db_url, connect_timeout=10)
    sleeper.autocommit = True
    producer = psycopg2.connect(db_url, connect_timeout=10)
    producer.set_session(isolation_level=isolation)
    seen: dict[str, Any] = {}

    def begin() -> None:  # (under REPEATABLE READ: the transaction's snapshot, taken now)
        query(producer, "SELECT 1")

    def insert() -> None:  # the trigger takes the lock shared and looks for a sleeper
        query(producer, "INSERT INTO tasks (payload) VALUES ('raced')")

    def commit() -> None:
        producer.commit()

    def mark() -> None:
        seen["mark"] = processes.asleep(Direct(sleeper), "sleeper")

    def last_claim() -> None:  # what a claim sent now can see
        seen["found"] = bool(query(sleeper, "SELECT 1 FROM tasks WHERE status = 'pending'"))

    producing: list[Callable[[], None]] = [begin, insert, commit]
    sleeping: list[Callable[[], None]] = [mark, last_claim]
    outcomes = set()
    try:
        for where in itertools.combinations(range(5), 2):  # the sleeper's two steps' places
            query(db, "DELETE FROM tasks")
            processes.awake(Direct(db), "sleeper")
            listener.since_last(f"reset {where}")
            seen.clear()
            steps, p, s = [], iter(producing), iter(sleeping)
            for i in range(5):
                steps.append(next(s) if i in where else next(p))
            for step in steps:
                step()
            order = " ".join(step.__name__ for step in steps)
            woken = listener.since_last(f"after {order}")
            if not seen["mark"].locked:
                outcome = "mark refused: polls"  # (and marks again, after the commit)
            elif seen["found"]:
                outcome = "found by the last claim"
            else:
                assert woken, f"{isolation}: {order}: the sleeper's last claim missed the " \
                              "row and no notification came (a lost wake-up)"
                outcome = "notified"
            assert seen["mark"].marked == seen["mark"].locked
            outcomes.add(outcome)
    finally:
        producer.close()
        sleeper.close()
    # The three ways out all happen (the race is there, and each is handled).
    assert outcomes == {"mark refused: polls", "found by the last claim", "notified"}, outcomes


# --- a real process, raced many times


def test_an_idle_process_raced_by_inserts_many_times_runs_each(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    p = serve(db_url, env={**IDLE, "WORKER_COUNT": "1"})
    wait_until(lambda: query(db, "SELECT asleep FROM taskworker_processes") == [(True,)],
               20, "the process to register", [p], fail_on_exit=True)
    rng = random.Random(20)
    done_so_far = 0
    for round_ in range(150):
        # The previous task just finished: the process is about to claim (empty),
        # mark itself asleep and claim a last time. Insert somewhere in there.
        time.sleep(rng.choice([0, 0, 0.0005, 0.001, 0.002, 0.004]))
        [task_id] = insert_tasks(db, [f"race {round_}"])
        wait_until(lambda t=task_id: query(db, "SELECT 1 FROM tasks WHERE id = %s "
                                               "AND status = 'done'", (t,)), WAKE_BOUND,
                   f"task {task_id} (round {round_}) to be done: a lost wake-up", [p],
                   interval=0.0005, fail_on_exit=True)
        done_so_far += 1
    assert done_so_far == 150
    # Idle again: the row says asleep (so the next insert notifies it).
    wait_until(lambda: query(db, "SELECT asleep FROM taskworker_processes") == [(True,)],
               WAKE_BOUND, "the process to mark itself asleep", [p], fail_on_exit=True)


# --- a listener that stopped reading fills the notification queue


def test_a_stuck_listener_filling_the_queue_fails_no_insert_and_wakes_the_others(
        db_url: str, db: Any, serve: ServeFactory) -> None:
    # The queue is 8 GB (PostgreSQL 15: not configurable), too much to fill in a
    # test: the limit the trigger stops at is lowered for this database to a
    # few pages' worth, which the stuck listener's backlog exceeds.
    [(dbname,)] = query(db, "SELECT current_database()")
    query(db, f'ALTER DATABASE "{dbname}" SET taskworker.notify_queue_limit = \'0.000001\'')
    p = serve(db_url, env=IDLE)
    wait_until(lambda: query(db, "SELECT 1 FROM pg_stat_activity WHERE datname = "
                                 "current_database() AND application_name = "
                                 "'taskworker listener' AND state = 'idle'"),
               20, "the listener to listen", [p], fail_on_exit=True)
    [first] = insert_tasks(db, ["before the queue filled"])
    wait_until(lambda: query(db, "SELECT 1 FROM tasks WHERE id = %s AND status = 'done'",
                             (first,)), WAKE_BOUND, "the first task", [p], fail_on_exit=True)

    stuck = psycopg2.connect(db_url, connect_timeout=10)
    filler = psycopg2.connect(db_url, connect_timeout=10)
    try:
        stuck.autocommit = True
        query(stuck, "LISTEN somewhere_else")
        stuck.autocommit = False
        query(stuck, "SELECT 1")  # idle in transaction: it reads no notification now
        with filler, filler.cursor() as cur:  # ~200 kB of notifications it holds back
            cur.execute("SELECT pg_notify('somewhere_else', repeat('x', 2000) || n) "
                        "FROM generate_series(1, 100) AS n")
        filler.autocommit = True
        wait_until(lambda: query(filler, "SELECT pg_notification_queue_usage() >= 0.000001")
                   == [(True,)], 10, "the queue to pass the limit")

        # The insert commits (its trigger does not notify past the limit) ...
        ids = insert_tasks(filler, ["while the queue is full", "and another"])
        # ... and the idle process still runs them (FETCH_INTERVAL is a minute):
        # its listener finds the queue full and its fetcher polls.
        wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE id = ANY(%s) "
                                     "AND status = 'done'", (ids,)) == [(2,)],
                   WAKE_BOUND, "the tasks inserted while the queue was full", [p],
                   fail_on_exit=True)
    finally:
        stuck.close()
        filler.close()
        query(db, f'ALTER DATABASE "{dbname}" RESET taskworker.notify_queue_limit')


# --- who asks for a notification


def test_only_a_sleeping_or_older_process_makes_inserts_notify(
        db: Any, listener: Listener) -> None:
    register(db, "busy", listens=False)
    insert_tasks(db, ["nobody sleeps"])
    assert listener.since_last("busy only") == []

    processes.asleep(Direct(db), "busy")
    insert_tasks(db, ["one sleeps"])
    assert [n.channel for n in listener.since_last("one asleep")] == [CHANNEL]
    processes.awake(Direct(db), "busy")

    # A process of the version before migration 018 registers without the
    # column: its row asks for every notification (it listens, and never says
    # it is busy), so a rolling deploy strands no one.
    query(db, "INSERT INTO taskworker_processes (holder, host, pid, queues, tasks, "
              "default_handler, schedules, lease_seconds) "
              "VALUES ('older', 'h', 2, NULL, '{}', true, '{}', 30)")
    insert_tasks(db, ["an older process listens"])
    assert [n.channel for n in listener.since_last("older")] == [CHANNEL]
