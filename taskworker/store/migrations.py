"""Apply migrations/NNN_name.sql in order, each once, each in its own transaction.

Applied versions are recorded in schema_migrations. A session advisory lock makes
two `taskworker migrate` run at the same moment take turns instead of racing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..logs import log
from ..settings import Settings
from . import sql
from .connection import connect
from .database import Direct, PgConnection

NO_TRANSACTION = "-- taskworker: no transaction"


def _code(text: str) -> bool:
    """Does `text` hold anything besides comments and blank lines?"""
    return any(line.strip() and not line.strip().startswith("--")
               for line in text.splitlines())


class SchemaMissing(Exception):
    """The database has no (or an outdated) tasks table; str() is for the user."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def transactional(self) -> bool:
        """False when the file's first line is `-- taskworker: no transaction`."""
        return self.text.lstrip().splitlines()[0].strip() != NO_TRANSACTION

    def statements(self) -> list[str]:
        """The file's statements, split at a `;` that ends a line (the files of a
        non-transactional migration hold simple statements only)."""
        parts = re.split(r";[ \t]*(?:\n|$)", self.text)
        return [p.strip() for p in parts if _code(p)]


def _folder() -> Path:
    """migrations/ of a source checkout, else the copy installed as package data."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("taskworker") / "migrations"))


def available() -> list[Migration]:
    """All migration files, by version."""
    found = []
    for path in _folder().glob("*.sql"):
        m = re.match(r"(\d+)_", path.name)
        if m:
            found.append(Migration(int(m.group(1)), path.name, path.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


def run(settings: Settings) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date)."""
    conn = connect(settings, autocommit=True, name="taskworker migrate", statement_timeout=0)
    db = Direct(conn)
    applied_now = []
    try:
        db.query(sql.migrations_lock)
        db.query(sql.migrations_table)
        done = applied(db)
        for mig in available():
            if mig.version in done:
                continue
            if mig.transactional:
                conn.autocommit = False
                with conn:  # one transaction per migration
                    db.query(mig.text)
                    db.query(sql.migration_record, {"version": mig.version, "name": mig.name})
                conn.autocommit = True
            else:  # e.g. CREATE INDEX CONCURRENTLY: one statement at a time, no prefix
                conn.statement_timeout_ms = None
                for statement in mig.statements():
                    db.query(statement)
                conn.statement_timeout_ms = 0
                db.query(sql.migration_record, {"version": mig.version, "name": mig.name})
            log.info("Applied migration %s", mig.name)
            applied_now.append(mig.name)
        db.query(sql.migrations_unlock)
    finally:
        conn.close()
    return applied_now


def applied(db: Direct) -> set[int]:
    """Versions recorded in schema_migrations (which must exist)."""
    return {row[0] for row in db.query(sql.migrations_applied)}


def check(conn: PgConnection) -> None:
    """Raise SchemaMissing unless every migration is applied: the commands that use
    the tasks table refuse to run on a database `taskworker migrate` has not
    prepared (or has prepared for an older taskworker)."""
    db = Direct(conn)
    if not db.query(sql.table_exists)[0][0]:
        raise SchemaMissing('table "tasks" does not exist: run "taskworker migrate" first')
    have = applied(db) if db.query(sql.migrations_table_exists)[0][0] else set()
    missing = [m.name for m in available() if m.version not in have]
    if missing:
        raise SchemaMissing(f"database schema is missing {', '.join(missing)}: "
                            'run "taskworker migrate" first')
