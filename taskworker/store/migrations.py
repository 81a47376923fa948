"""Apply migrations/NNN_name.sql in order, each once: each in its own
transaction, or, for a file whose first line is `-- taskworker: no transaction`
(CREATE INDEX CONCURRENTLY), statement by statement.

Applied versions are recorded in schema_migrations. A session advisory lock makes
two `taskworker migrate` run at the same moment take turns instead of racing;
live_migration.py is how each file is applied to a table in use.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..logs import log
from ..settings import Settings
from . import sql
from .connection import connect
from .database import Direct, PgConnection
from .live_migration import (
    LockPolicy,
    MigrationError,
    apply_in_transaction,
    apply_without_transaction,
    index_names,
    take_turn,
)

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
    """The copy a wheel installs as taskworker/migrations/, else (a checkout, or an
    editable install of one) the checkout's migrations/. In that order: installed,
    the folder beside the package is site-packages/migrations/, another
    distribution's if anything."""
    installed = Path(str(resources.files("taskworker") / "migrations"))
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "migrations"


def available() -> list[Migration]:
    """All migration files, by version."""
    found = []
    for path in _folder().glob("*.sql"):
        m = re.match(r"(\d+)_", path.name)
        if m:
            found.append(Migration(int(m.group(1)), path.name, path.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


def run(settings: Settings, to: int | None = None,
        policy: LockPolicy | None = None) -> list[str]:
    """Apply what is missing (up to version `to` when given); return the names
    applied (empty when up to date). MigrationError for the user's one line."""
    wanted = [m for m in available() if to is None or m.version <= to]
    if to is not None and to not in {m.version for m in wanted}:
        raise MigrationError(f"no migration numbered {to} (there are "
                             f"{', '.join(str(m.version) for m in available())})")
    conn = connect(settings, autocommit=True, name="taskworker migrate", statement_timeout=0)
    conn.statement_timeout_ms = None  # the session's own settings: see migration_session
    db = Direct(conn)
    pid = conn.get_backend_pid()  # as the server announced it at the start
    applied_now = []
    try:
        if pid != db.query(sql.backend_pid)[0][0]:
            raise MigrationError(
                "migrate must connect to PostgreSQL directly, not through a connection "
                "pooler (it keeps a session lock and builds indexes outside transactions): "
                "point DATABASE_URL at the server itself")
        db.query(sql.migration_session)
        take_turn(db)
        db.query(sql.migrations_table)
        done = applied(db)
        for mig in wanted:
            if mig.version in done:
                continue
            record = {"version": mig.version, "name": mig.name}
            if mig.transactional:
                apply_in_transaction(conn, mig.name, mig.text, record, policy or LockPolicy())
            else:  # e.g. CREATE INDEX CONCURRENTLY: one statement at a time
                apply_without_transaction(conn, mig.name, mig.statements(),
                                          index_names(mig.text), record)
            log.info("Applied migration %s", mig.name)
            applied_now.append(mig.name)
        db.query(sql.migrations_unlock)
    except (KeyboardInterrupt, SystemExit):  # Ctrl+C: stop an index build (left INVALID,
        _cancel(settings, pid)  # rebuilt next time), not leave it running
        raise
    finally:
        conn.close()
    return applied_now


def _cancel(settings: Settings, pid: int) -> None:
    """Cancel what the migrate session `pid` is running, from a connection of its
    own: an interrupted green wait leaves the session's connection unusable for
    conn.cancel(), and the server would go on with the statement regardless."""
    with contextlib.suppress(Exception):
        other = connect(settings, name="taskworker migrate (cancel)", statement_timeout=0)
        try:
            Direct(other).query(sql.cancel_backend, {"pid": pid})
        finally:
            other.close()


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
