"""The benchmark's own databases on one PostgreSQL server: created per run as
twbench_<run id>_<purpose>, dropped again at the end (drop_all, also on Ctrl+C).
"""
from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

PREFIX = "twbench_"
SETTINGS_SHOWN = ("fsync", "synchronous_commit", "autovacuum", "shared_buffers",
                  "max_connections")


def connect(url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url, connect_timeout=10, application_name="twbench")
    conn.autocommit = True
    return conn


def execute(url: str, statement: str) -> None:
    """Run one statement that returns nothing on a connection of its own."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def url_with_database(url: str, name: str) -> str:
    """`url` (postgresql://...) pointing at database `name` instead."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {url!r}")
    return urlunsplit(parts._replace(path="/" + name))


class Server:
    """The server behind `url`, and the databases this run created on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.run_id = secrets.token_hex(3)
        self.created: list[str] = []

    def create(self, purpose: str) -> str:
        """Create an empty database for `purpose`; returns its URL."""
        name = f"{PREFIX}{self.run_id}_{purpose}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return url_with_database(self.url, name)

    def drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def _admin(self, statement: str) -> None:
        """One statement on the server's maintenance connection (autocommit)."""
        conn = connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def drop_all(self) -> list[str]:
        """Drop every database this run created; returns the ones that failed."""
        failed = []
        for name in list(self.created):
            try:
                self.drop(name)
            except psycopg2.Error:
                failed.append(name)
        return failed

    def stale(self) -> list[str]:
        """twbench_ databases left by an earlier run that was killed outright."""
        conn = connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                            (PREFIX + "%",))
                return [r[0] for r in cur.fetchall() if r[0] not in self.created]
        finally:
            conn.close()

    def info(self) -> dict[str, str]:
        conn = connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                info = {"version": cur.fetchone()[0]}
                cur.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)",
                            (list(SETTINGS_SHOWN),))
                for name, setting, unit in cur.fetchall():
                    if unit == "8kB":
                        setting = f"{int(setting) * 8 // 1024}MB"
                    info[name] = setting
                return info
        finally:
            conn.close()


def count_listeners(conn: psycopg2.extensions.connection, dbname: str) -> int:
    """Sessions in `dbname` that listen: their last statement was a LISTEN (after
    taskworker's `SET LOCAL statement_timeout = N;`), or taskworker's listener has
    sent the test notification it sends once its LISTEN is in place."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND (query ~* '^(set local statement_timeout = \\d+; )?listen ' "
                    "OR (application_name = 'taskworker listener' "
                    "AND query ILIKE '%%pg_notify(%%')) ", (dbname,))
        return cur.fetchone()[0]


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")
