"""The fixtures of tests/ and examples/: a real PostgreSQL server, one migrated
template database per session, a cheap copy of it per test (made ahead, dropped
behind: `Copies`), and taskworker run as subprocesses. A plain module, loaded by
the root conftest.py as a pytest plugin.

No gevent here on purpose: the pytest process talks to the database with plain
blocking psycopg2; everything that patches runs in a child process.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
from invariants import query, wait_until
from pgserver import _admin, database_url, server_url, temp_database
from proc import ServeFactory, ServeProcess, run_cli
from psycopg2.sql import SQL, Identifier

from taskworker.settings import FIELDS


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit os.environ: drop taskworker's variables a developer may have set."""
    for var in FIELDS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def own_registry() -> Iterator[None]:
    """Tasks a test registers in this process (taskworker.registry, loaded by then)
    are forgotten after it: a later test's enqueue checks names against the
    registry, and would meet them (which tests come before it changes with -n)."""
    loaded = sys.modules.get("taskworker.registry")
    before = {} if loaded is None else dict(loaded._registry)
    yield
    registry = sys.modules.get("taskworker.registry")
    if registry is not None:
        registry._registry.clear()
        registry._registry.update(before)


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    """URL of a superuser connection: $TEST_DATABASE_URL if it answers, else a throwaway cluster."""
    with server_url() as url:
        yield url


class Copies:
    """The tests' databases, made and dropped off the tests' time.

    Each CREATE DATABASE writes the template into the WAL and each DROP DATABASE
    waits for a checkpoint: a second or more apiece on a busy server, most of a
    short test. So copies of the template are made AHEAD of the tests that take
    them, in a thread, and every database a test had is dropped (WITH (FORCE): a
    killed process's backends do not hold it) behind it, by DROPPERS threads (drops
    that wait together share a checkpoint). A test still gets a database of its own
    that nothing else touched; `close()` drops what is left and raises the first
    error a drop met.
    """

    AHEAD = 2  # copies ready before a test asks
    DROPPERS = 4

    def __init__(self, base_url: str, template: str) -> None:
        self.base_url, self.template = base_url, template
        self._making = ThreadPoolExecutor(1, thread_name_prefix="tw-make-db")
        self._dropping = ThreadPoolExecutor(self.DROPPERS, thread_name_prefix="tw-drop-db")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []

    def _copy(self) -> str:
        name = "tw_" + secrets.token_hex(4)
        _admin(self.base_url, SQL("CREATE DATABASE {} TEMPLATE {}").format(
            Identifier(name), Identifier(self.template)))
        return name

    def take(self) -> str:
        """The name of a fresh copy (the creation's error, if it failed)."""
        if not self._ready:
            self._ready.append(self._making.submit(self._copy))
        taken = self._ready.popleft()
        while len(self._ready) < self.AHEAD:
            self._ready.append(self._making.submit(self._copy))
        return taken.result()

    def drop(self, name: str) -> None:
        """Drop database `name` (made by `take` or elsewhere) behind the caller."""
        self._drops.append(self._dropping.submit(_admin, self.base_url, SQL(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name))))

    def close(self) -> None:
        for made in self._ready:
            if not made.cancel() and made.exception() is None:
                self.drop(made.result())
        self._making.shutdown(wait=True)
        self._dropping.shutdown(wait=True)
        errors = [e for e in (d.exception() for d in self._drops) if e is not None]
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def template_db(pg_base_url: str) -> Iterator[str]:
    """Name of a database migrated once per session with `taskworker migrate`."""
    with temp_database(pg_base_url, prefix="tw_template_") as (name, url):
        code, out, err = run_cli(["migrate"], env={"DATABASE_URL": url})
        assert code == 0, f"taskworker migrate exited {code}\nstdout:\n{out}\nstderr:\n{err}"
        yield name


@pytest.fixture(scope="session")
def copies(pg_base_url: str, template_db: str) -> Iterator[Copies]:
    made = Copies(pg_base_url, template_db)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def empty_db_url(pg_base_url: str, copies: Copies) -> Iterator[str]:
    """URL of a fresh database with no schema at all."""
    name = "tw_" + secrets.token_hex(4)
    _admin(pg_base_url, SQL("CREATE DATABASE {}").format(Identifier(name)))
    yield database_url(pg_base_url, name)
    copies.drop(name)


@pytest.fixture
def db_url(pg_base_url: str, copies: Copies) -> Iterator[str]:
    """URL of a fresh, migrated database (a copy of `template_db`)."""
    name = copies.take()
    yield database_url(pg_base_url, name)
    copies.drop(name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg2.extensions.connection]:
    """Autocommit psycopg2 connection to `db_url`, for setting up and asserting."""
    conn = psycopg2.connect(db_url, connect_timeout=10)
    conn.autocommit = True
    yield conn
    conn.close()



@pytest.fixture
def role(db: psycopg2.extensions.connection) -> Iterator[str]:
    """A login role allowed to use the tables of `db_url`, with CONNECTION LIMIT 0
    (tests move it: `invariants.limit`); its connections are ended and it is
    dropped afterwards. `db` (the superuser's) does not count against it."""
    name = f"tw_limited_{os.getpid()}"
    query(db, f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 0")
    query(db, f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
    query(db, f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}")
    yield name
    query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
          (name,))
    wait_until(lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE usename = %s",
                                 (name,)), 10, f"{name}'s connections to end")
    query(db, f"REASSIGN OWNED BY {name} TO CURRENT_USER")
    query(db, f"DROP OWNED BY {name}")
    query(db, f"DROP ROLE {name}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """Factory: serve(db_url, env={...}, args=[...], prefix=[...]) starts `taskworker serve`
    (behind `prefix`, e.g. `ip netns exec NAME`, when given).

    cwd is an empty temp dir; output goes to tmp_path/serve-N.log. Processes
    still alive at teardown are SIGKILLed.
    """
    started: list[ServeProcess] = []
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    counter = itertools.count(1)

    def start(db_url: str, env: Mapping[str, str] | None = None,
              args: Sequence[str] = (), prefix: Sequence[str] = ()) -> ServeProcess:
        log = tmp_path / f"serve-{next(counter)}.log"
        p = ServeProcess(args, {"DATABASE_URL": db_url, **(env or {})}, str(cwd), str(log),
                         prefix=prefix)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
