"""Statements prepared once per connection: the claim, sent many times a second.

The claim is a long statement (it finds the queues and names with work, shares
the claim between queues, takes concurrency slots): parsing and planning it
cost more than running it (about 2 ms against 1 for a claim of 10). A
`Prepared` statement is sent as `PREPARE name AS ...; EXECUTE name(...)` the
first time on a connection (one round trip), and as `EXECUTE name(...)` after
that, with a generic plan built once (plan_cache_mode = force_generic_plan, in
the same transaction as the planner settings the statement is sent with).

Prepared statements live in a server session, and a pooler in transaction mode
(PgBouncer's usual setting) hands each transaction to any server session: there
an EXECUTE could meet a session that never saw the PREPARE. So a connection
prepares only when it talks to the server directly: the backend pid the server
announced at connect is the one that answers `pg_backend_pid()` (a pooler
announces its own). Behind a pooler, or on a connection this module did not
open (a caller's own, through `Direct`), the statement is sent whole each time.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg2.extensions

from .paramstyles import numbered


class Prepared:
    """A named statement with `%(name)s` parameters, of the PostgreSQL types
    `types` gives (PREPARE takes them: a parameter used in several places could
    not be given one type by inference)."""

    def __init__(self, name: str, text: str, types: Mapping[str, str],
                 prefix: str = "", generic: bool = True) -> None:
        self.name = name
        self.text = text  # the statement as sent whole
        self.prefix = prefix  # settings sent in front, in the same transaction
        body, names = numbered(text, "%%")
        self.params = list(names)
        args = ", ".join(f"%({p})s" for p in self.params)
        declared = ", ".join(types[p] for p in self.params)
        self._execute = f"EXECUTE {name}({args})"
        self._prepare = f"PREPARE {name}({declared}) AS {body};\n"
        # Planned once (generic), or for the values of each execution (custom:
        # PREPARE then saves the parsing only).
        self._generic = (f"SET LOCAL plan_cache_mode = "
                         f"{'force_generic_plan' if generic else 'force_custom_plan'};\n")

    def sql_for(self, conn: Any) -> str:
        """What to send on `conn` (whose `prepared` says what it has prepared)."""
        prepared = getattr(conn, "prepared", None)
        if prepared is None:  # not ours, or behind a pooler
            return self.prefix + self.text
        if self.name in prepared:
            return self.prefix + self._generic + self._execute
        return self.prefix + self._generic + self._prepare + self._execute

    def explained(self, options: str, prepare: bool) -> str:
        """The EXPLAIN of what a connection that prepares runs (for tests)."""
        return (self.prefix + self._generic + (self._prepare if prepare else "")
                + f"EXPLAIN ({options}) " + self._execute)

    def sent(self, conn: Any) -> None:
        """The statement ran on `conn`: it is prepared there from now on."""
        prepared = getattr(conn, "prepared", None)
        if prepared is not None:
            prepared.add(self.name)

    def forget(self, conn: Any) -> None:
        """The server says it has no such statement (the session was reset)."""
        prepared = getattr(conn, "prepared", None)
        if prepared is not None:
            prepared.discard(self.name)


def direct_session(conn: psycopg2.extensions.connection) -> bool:
    """Does `conn` (in autocommit mode) reach the server without a pooler in
    between? (The pid the server announced at connect answers the query.)"""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
        assert row is not None  # (a SELECT without FROM returns one row)
        (pid,) = row
    return pid == conn.info.backend_pid


def run(cur: psycopg2.extensions.cursor, statement: Prepared,
        params: Mapping[str, Any] | None) -> None:
    """Execute `statement` on `cur`, preparing it first where it is not yet.

    A session that lost its prepared statements (DISCARD ALL) gets it again; one
    that kept it through a failed round trip (PREPARE is not undone by the
    rollback) is told so; either way the statement is sent once more."""
    conn = cur.connection
    try:
        cur.execute(statement.sql_for(conn), params)
    except psycopg2.errors.InvalidSqlStatementName:
        statement.forget(conn)
        cur.execute(statement.sql_for(conn), params)
    except psycopg2.errors.DuplicatePreparedStatement:
        statement.sent(conn)
        cur.execute(statement.sql_for(conn), params)
    statement.sent(conn)
