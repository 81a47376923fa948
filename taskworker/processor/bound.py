"""Transactions bound to a task: a handler's writes to this database and its
task's outcome, committed together or not at all (part 21).

    @taskworker.task()
    def charge(order_id: int, cents: int) -> str:
        with taskworker.transaction() as conn:      # taken from this process's pool
            with conn.cursor() as cur:
                cur.execute("INSERT INTO charges (order_id, cents) VALUES (%s, %s)",
                            (order_id, cents))
        return "charged"                            # written in the same transaction

A task runs at least once; its writes through the bound connection happen
exactly once. The connection comes from a pool of TRANSACTION_POOL_SIZE
connections (opened on first use), already in a transaction; at the handler's
return the worker writes the outcome as that transaction's last statement,
fenced exactly as the completer's batched writes are (the holder, and the hold's
fencing token of part 12), and commits. If the task was taken away meanwhile
(its lease ran out and another process rescued it, or it was cancelled), the
fenced write finds no row: the whole transaction rolls back, the handler's writes
with it, and the log says so. A handler that raises rolls it back and its
failure is written as any other, apart. A lost reply to the commit is settled by
reading the row back, as for any outcome.

Tasks that never ask keep the batched path: the two kinds mix in one process.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2
from gevent.lock import BoundedSemaphore

from ..logs import log
from ..settings import Settings
from ..store import completion
from ..store import tasks as store
from ..store.completion import Written
from ..store.connection import CONNECTION_ERRORS, DatabaseUnavailable, connect
from ..store.database import Direct, first_line
from .outcomes import GIVE_BACK, Outcome, fields


class TransactionPool:
    """At most `size` connections for the tasks' bound transactions, opened on
    first use and kept open between tasks (a broken one is closed); a task that
    asks while all are in use waits for one."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._free = BoundedSemaphore(size)
        self._idle: list[Any] = []

    def acquire(self) -> Any:
        self._free.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            # No statement timeout: the task's own TASK_TIMEOUT bounds its work.
            return connect(self.settings, autocommit=False, name="taskworker transaction",
                           statement_timeout=0)
        except BaseException:
            self._free.release()
            raise

    def release(self, conn: Any) -> None:
        """Back to the pool, its transaction ended (rolled back if still open)."""
        try:
            if not conn.closed and conn.get_transaction_status() != 0:
                conn.rollback()
            if not conn.closed:
                self._idle.append(conn)
        except psycopg2.Error:  # (broken, or killed mid-statement: not reusable)
            conn.close()
        finally:
            self._free.release()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Bound:
    """One task's bound transaction, taken from the pool when the handler asks."""

    def __init__(self, pool: TransactionPool) -> None:
        self.pool = pool
        self.conn: Any = None

    def connection(self) -> Any:
        """The connection, in its transaction (the same one for the whole run)."""
        if self.conn is None:
            self.conn = self.pool.acquire()
        return self.conn

    def rollback(self) -> None:
        """The handler raised, or its task ends another way: undo, give back."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.pool.release(conn)

    def commit(self, outcome: Outcome, holder: str, frees_slots: bool,
               failed: Callable[[Outcome, str], Outcome]) -> tuple[Outcome, Written | None]:
        """Write `outcome` as the transaction's last statement and commit it.

        Returns the outcome and the holds written (empty: fenced off, the whole
        transaction rolled back); or, for the completer to write, and None: when
        the connection was lost and the row shows the commit did not land, a give
        back (the run is undone, as if it never happened); when PostgreSQL
        refused the commit (a deferred constraint, say), `failed(outcome, why)`."""
        conn, self.conn = self.conn, None
        task = outcome.task
        try:
            db = Direct(conn)
            written = completion.complete(db, holder=holder, writes=[outcome.write()],
                                          frees_slots=frees_slots)
            if not written:
                conn.rollback()
                log.warning("[Worker %d] Task ID: %d lease lost: its transaction was rolled "
                            "back, the handler's writes with it", outcome.worker, task.id,
                            extra=fields(outcome))
                return outcome, {}
            if outcome.wakes_others:
                store.wake_others(db)  # (sent at the commit)
            conn.commit()
            return outcome, written
        except CONNECTION_ERRORS as exc:
            why = first_line(exc)
            conn.close()
            self.pool.release(conn)  # (before _landed takes one: a pool of one)
            conn = None
            if self._landed(outcome):
                log.info("Task ID: %d its transaction was committed before the connection "
                         "was lost", task.id, extra=fields(outcome))
                return outcome, {task.hold: "before"}
            # Rolled back with the connection, the handler's writes with it: as if
            # the run never happened, the task goes back, its attempt uncounted.
            log.warning("[Worker %d] Task ID: %d its transaction was lost with the "
                        "connection (%s): the handler's writes were rolled back; giving "
                        "it back", outcome.worker, task.id, why, extra=fields(outcome))
            return Outcome(task, outcome.worker, GIVE_BACK), None
        except Exception as exc:  # PostgreSQL refused the outcome (or a deferred check)
            conn.rollback()
            return failed(outcome, f"could not commit its transaction: "
                                   f"{type(exc).__name__}: {first_line(exc)}"), None
        finally:
            if conn is not None:
                self.pool.release(conn)

    def _landed(self, outcome: Outcome) -> bool:
        """After a lost reply: is the outcome in the row (so the commit landed)?
        False also when the row cannot be read: the completer then writes the
        failure, fenced, and a landed commit fences it off."""
        try:
            conn = self.pool.acquire()
        except DatabaseUnavailable:
            return False
        try:
            return store.outcome_landed(Direct(conn), outcome.write())
        except CONNECTION_ERRORS:
            return False
        finally:
            self.pool.release(conn)
