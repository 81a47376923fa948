"""A PostgreSQL server for the tests: an existing one, or a throwaway cluster.

Tests need a real server (SKIP LOCKED, LISTEN/NOTIFY, template databases), but
must not depend on one being configured. `server_url()` uses TEST_DATABASE_URL
when it answers and otherwise starts a private cluster on a free port, which is
thrown away afterwards. The module has no pytest dependency so scripts (the
demo) can reuse it: `python tests/pgserver.py [--port N] [--dbname NAME]`
starts a cluster (on port N, default a free one; with database NAME created, default
`postgres`), prints its URL and keeps it up until Ctrl+C / SIGTERM.

initdb and pg_ctl refuse to run as root, so as root they run as the `postgres`
OS user via runuser.

`cluster()` is the general form: it can listen on another address (the test hosts
of tests/hosts.py put it on a bridge inside a network namespace), trust clients of
a subnet, and run pg_ctl behind a command prefix (`ip netns exec NAME`); it yields
a `Cluster` whose `local_url` (the unix socket) reaches the server from anywhere on
this machine, whatever network namespace it listens in.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import psycopg2
from psycopg2.extensions import make_dsn
from psycopg2.sql import SQL, Identifier
from waiting import wait_until

SERVER_USER = "postgres"  # OS user that runs initdb/pg_ctl when we are root
UNREACHABLE_URL = "postgres://postgres@127.0.0.1:1/x"  # nothing listens on port 1: refused at once


def can_connect(url: str, timeout: int = 3) -> bool:
    """Return whether a connection to `url` succeeds within `timeout` seconds."""
    try:
        psycopg2.connect(url, connect_timeout=timeout).close()
    except psycopg2.Error:
        return False
    return True


def database_url(base_url: str, dbname: str) -> str:
    """Return `base_url` pointing at database `dbname` (URL or key=value DSN)."""
    if "://" in base_url:
        return urlsplit(base_url)._replace(path="/" + quote(dbname, safe="")).geturl()
    return make_dsn(base_url, dbname=dbname)


def _bin(name: str) -> str:
    """Locate a server binary: $PG_BINDIR, then PATH, then the newest Debian install."""
    if os.environ.get("PG_BINDIR"):
        return os.path.join(os.environ["PG_BINDIR"], name)
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not versions:
        raise RuntimeError(f"{name} not found: set PG_BINDIR to PostgreSQL's bin directory")
    return os.path.join(versions[-1], name)


def _run_as_server_user(args: list[str], cwd: str, prefix: Sequence[str] = ()) -> None:
    if os.geteuid() == 0:
        args = ["runuser", "-u", SERVER_USER, "--", *args]
    subprocess.run([*prefix, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster."""

    root: str  # its temp folder: data/, server.log, and the unix socket
    host: str  # the TCP address it listens on
    port: int
    settings: tuple[str, ...] = ()  # "name=value", after the throwaway defaults (see start)

    @property
    def url(self) -> str:
        """Superuser URL over TCP, at `host`."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def local_url(self) -> str:
        """Superuser URL over the unix socket in `root`."""
        return f"postgresql://postgres@/postgres?host={quote(self.root, safe='')}&port={self.port}"

    @property
    def log(self) -> str:
        return _read(os.path.join(self.root, "server.log"))


@contextlib.contextmanager
def cluster(max_connections: int = 300, start_timeout: float = 30, port: int | None = None,
            host: str = "127.0.0.1", trust: Sequence[str] = (), prefix: Sequence[str] = (),
            tmp_prefix: str = "tw-pg-", settings: Sequence[str] = ()) -> Iterator[Cluster]:
    """Run a private cluster in a temp dir; yield it, then destroy it.

    TCP on `host` only (on `port`, default a free one on 127.0.0.1), unix socket
    inside the temp dir (named `tmp_prefix` + random), trust auth for local
    clients and for the networks in `trust` (CIDR, e.g. "10.213.0.0/24"). pg_ctl
    runs behind `prefix` (e.g. `ip netns exec NAME`). Durability is switched off
    (fsync etc.): the data is thrown away anyway. `settings` ("name=value") come
    after those and override them.
    """
    root = tempfile.mkdtemp(prefix=tmp_prefix)
    data = os.path.join(root, "data")
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER, SERVER_USER)
    started = False
    try:
        _run_as_server_user([_bin("initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                             "--locale=C", "--no-sync", "-D", data], cwd=root)
        if trust:
            with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
                hba.writelines(f"host all all {net} trust\n" for net in trust)
        started = True  # pg_ctl may leave a server behind even when it reports failure
        yield start(Cluster(root, host, port or free_port(), tuple(settings)), max_connections,
                    start_timeout, prefix)
    finally:
        if started:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run_as_server_user([_bin("pg_ctl"), "stop", "-m", "immediate", "-D", data],
                                    cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def restart(running: Cluster, max_connections: int = 300, start_timeout: float = 30) -> None:
    """Stop the cluster at once (`-m immediate`: every connection and open
    transaction lost, as in a crash) and start it again on the same port, with
    its settings. A commit survives the crash only if the cluster runs with
    synchronous_commit on (the throwaway default is off: an acknowledged commit
    may still be in the WAL buffers when it dies)."""
    stop(running)
    start(running, max_connections, start_timeout)


def stop(running: Cluster) -> None:
    """Stop the cluster at once (`-m immediate`: as in a crash; its folder stays)."""
    _run_as_server_user([_bin("pg_ctl"), "stop", "-m", "immediate", "-D",
                         os.path.join(running.root, "data")], cwd=running.root)


def start(running: Cluster, max_connections: int = 300, start_timeout: float = 30,
           prefix: Sequence[str] = ()) -> Cluster:
    """Start the cluster in `running.root` (its data/, stopped) on `running.host`
    and `running.port` with `running.settings`; return `running` once it answers
    (a standby: read-only)."""
    data, log = os.path.join(running.root, "data"), os.path.join(running.root, "server.log")
    options = (f"-h {running.host} -p {running.port} -k {running.root} "
               f"-c max_connections={max_connections}"
               " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
               + "".join(f" -c {setting}" for setting in running.settings))
    try:
        _run_as_server_user([_bin("pg_ctl"), "start", "-w", "-t", str(int(start_timeout)),
                             "-D", data, "-l", log, "-o", options], cwd=running.root,
                            prefix=prefix)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"postgres did not start: {exc.stderr!r}\n{_read(log)}") from exc
    try:
        wait_until(lambda: can_connect(running.local_url), start_timeout,
                   lambda: f"postgres to answer at {running.local_url}\n{_read(log)}",
                   interval=0.1)
    except AssertionError as exc:  # (main() says a RuntimeError in one line)
        raise RuntimeError(str(exc)) from None
    return running


@contextlib.contextmanager
def replica(primary: Cluster, start_timeout: float = 30, settings: Sequence[str] = ()
            ) -> Iterator[Cluster]:
    """A streaming replica of `primary` (asynchronous, hot standby), on a free
    port of 127.0.0.1 in a temp dir of its own: `pg_basebackup -R` (which writes
    standby.signal and primary_conninfo) from `primary`, then started with
    `settings` as `cluster` starts one; yield it, then destroy it."""
    root = tempfile.mkdtemp(prefix="tw-pg-replica-")
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER, SERVER_USER)
    started = False
    try:
        _run_as_server_user([_bin("pg_basebackup"), "-h", primary.host, "-p", str(primary.port),
                             "-U", "postgres", "-D", os.path.join(root, "data"), "-R",
                             "-X", "stream", "-c", "fast", "--no-sync"], cwd=root)
        started = True
        yield start(Cluster(root, "127.0.0.1", free_port(), tuple(settings)),
                    start_timeout=start_timeout)
    finally:
        if started:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run_as_server_user([_bin("pg_ctl"), "stop", "-m", "immediate", "-D",
                                     os.path.join(root, "data")], cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def promote(standby: Cluster, timeout: float = 30) -> None:
    """`pg_ctl promote`: the standby ends recovery and takes writes; returns once
    it does."""
    _run_as_server_user([_bin("pg_ctl"), "promote", "-w", "-t", str(int(timeout)), "-D",
                         os.path.join(standby.root, "data")], cwd=standby.root)


@contextlib.contextmanager
def throwaway_cluster(max_connections: int = 300, start_timeout: float = 30,
                      port: int | None = None) -> Iterator[str]:
    """Run a private cluster in a temp dir; yield its superuser URL, then destroy it.

    TCP on 127.0.0.1 only (on `port`, default a free one), unix socket inside the
    temp dir, trust auth (see `cluster`).
    """
    with cluster(max_connections, start_timeout, port) as running:
        yield running.url


def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return f.read()
    return ""


@contextlib.contextmanager
def server_url(env_var: str = "TEST_DATABASE_URL") -> Iterator[str]:
    """Yield $TEST_DATABASE_URL if it answers within 3 s, else a throwaway cluster's URL."""
    url = os.environ.get(env_var)
    if url and can_connect(url):
        yield url
        return
    with throwaway_cluster() as url:
        yield url


def _admin(base_url: str, statement: SQL) -> None:
    conn = psycopg2.connect(base_url, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextlib.contextmanager
def temp_database(base_url: str, prefix: str = "tw_", template: str | None = None
                  ) -> Iterator[tuple[str, str]]:
    """Create database `<prefix><random>` (optionally from `template`); yield (name, url).

    The database is dropped WITH (FORCE) afterwards, so connections a test left
    open (or a killed subprocess's backends) do not block the drop.
    """
    name = prefix + secrets.token_hex(4)
    create = SQL("CREATE DATABASE {}").format(Identifier(name))
    if template:
        create = SQL("{} TEMPLATE {}").format(create, Identifier(template))
    _admin(base_url, create)
    try:
        yield name, database_url(base_url, name)
    finally:
        _admin(base_url, SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))


def main(argv: list[str] | None = None) -> None:
    """Start a throwaway cluster, print its URL, keep it up until SIGINT/SIGTERM.

    Both signals remove the cluster and its folder before the process exits.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--dbname", default="postgres",
                        help="database to create and print the URL of (default: postgres)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with throwaway_cluster(port=args.port) as url:
            if args.dbname != "postgres":
                _admin(url, SQL("CREATE DATABASE {}").format(Identifier(args.dbname)))
            print(database_url(url, args.dbname), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    signal.pause()
    except (RuntimeError, psycopg2.Error) as exc:
        sys.exit(f"pgserver: {exc}")


if __name__ == "__main__":
    main()
