"""Applying one migration to a table that is in use, without stopping the
processes that enqueue into it and serve it for more than about a second.

- An ALTER TABLE needs the table to itself: it waits behind any open transaction
  that touched the table (an application's, which enqueued and went on with its
  own work), and every later statement on the table queues behind the ALTER. So
  a transactional migration waits at most `lock_timeout` for its locks; when it
  does not get them it is rolled back (holding nothing) and tried again a little
  later, up to `retry_for`, after which migrate names the transaction in the way.
- An index built CONCURRENTLY blocks no write, but a build that was interrupted
  leaves an INVALID index behind, which `IF NOT EXISTS` would keep: it is dropped
  (CONCURRENTLY too) before the file runs again.
- Two migrators take turns through an advisory lock that is tried, every
  POLL_EVERY seconds, not waited for: a session waiting for the lock sits in an
  open transaction, which the holder's CREATE INDEX CONCURRENTLY waits for in turn.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql as pgsql

from ..logs import log
from . import sql
from .database import Direct, PgConnection

POLL_EVERY = 0.5  # seconds between two tries of the migrators' advisory lock


class MigrationError(Exception):
    """A migration that could not be applied; str() is one line for the user."""


@dataclass(frozen=True)
class LockPolicy:
    """How a transactional migration waits for its locks on a busy table."""

    lock_timeout: float = 1.0  # seconds of waiting per attempt (the longest stall it causes)
    retry_for: float = 120.0  # seconds of attempts before giving up


# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name`: the index a file builds.
_CREATES_INDEX = re.compile(
    r'CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?("[^"]+"|\w+)',
    re.IGNORECASE)


def index_names(text: str) -> list[str]:
    """Names of the indexes a migration file builds CONCURRENTLY."""
    return [n[1:-1] if n.startswith('"') else n.lower() for n in _CREATES_INDEX.findall(text)]


def take_turn(db: Direct) -> None:
    """Return holding the migrators' session advisory lock, saying once that
    another migrate holds it while it does."""
    said = False
    while not db.query(sql.migrations_lock)[0][0]:
        if not said:
            log.info("Waiting for another migrate to finish...")
            said = True
        time.sleep(POLL_EVERY)


def apply_in_transaction(conn: PgConnection, name: str, text: str, record: dict,
                         policy: LockPolicy) -> None:
    """Run `text` and record it in one transaction, retried while its locks are
    not granted within policy.lock_timeout; MigrationError once policy.retry_for
    has passed."""
    db = Direct(conn)
    ms = str(max(1, round(policy.lock_timeout * 1000)))
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        conn.autocommit = False
        try:
            with conn:  # committed, or rolled back: nothing held between attempts
                db.query(sql.migration_lock_timeout, {"ms": ms})
                db.query(text)
                db.query(sql.migration_record, record)
            return
        except psycopg2.errors.LockNotAvailable:
            pass
        finally:
            conn.autocommit = True
        holder = lock_holder(db)
        if time.monotonic() - started + 2 * policy.lock_timeout > policy.retry_for:
            raise MigrationError(
                f"migration {name} could not get its locks in {attempts} attempts of "
                f"{policy.lock_timeout:g}s over {time.monotonic() - started:.0f}s: {holder}; "
                "end that transaction (or wait for it) and run migrate again")
        log.warning("Migration %s waited %gs for its locks (%s); trying again in %gs",
                    name, policy.lock_timeout, holder, policy.lock_timeout)
        time.sleep(policy.lock_timeout)  # the statements queued behind it go through


def lock_holder(db: Direct) -> str:
    """What a migration that timed out on a lock is most likely waiting behind."""
    rows = db.query(sql.lock_holder)
    if not rows:
        return "no other transaction holds a lock on a table now"
    pid, app, state, age, tables = rows[0]
    return (f"the oldest transaction holding a lock is pid {pid} ({app}, {state}, "
            f"open {age}s) on {tables}")


def apply_without_transaction(conn: PgConnection, name: str, statements: list[str],
                              indexes: list[str], record: dict) -> None:
    """Send `statements` one by one outside a transaction (CREATE INDEX
    CONCURRENTLY), after dropping any of `indexes` an interrupted run left
    INVALID; record the migration once every statement has succeeded, so an
    interrupted one runs again, whole, next time (its statements say IF NOT EXISTS)."""
    db = Direct(conn)
    invalid = db.query(sql.invalid_indexes, {"names": indexes}) if indexes else []
    for (index,) in invalid:
        log.warning("Dropping invalid index %s (left by an interrupted build) to build it again",
                    index)
        db.query(pgsql.SQL(sql.drop_index_concurrently).format(index=pgsql.Identifier(index)))
    for statement in statements:
        db.query(statement)
    db.query(sql.migration_record, record)
