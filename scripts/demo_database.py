"""scripts/demo.sh's look at DATABASE_URL: use it, create its database, or start a cluster?

Run by demo.sh with .venv's Python from the repository root. Prints one field per line:

    ok URL          the server at DATABASE_URL (environment, then .env, then the
                    default) answers
    created URL     it answered that the database does not exist; now it does
    absent PORT DB  nothing listens where DATABASE_URL points (TCP connection refused,
                    or no unix socket): demo.sh starts a throwaway cluster on PORT
                    with database DB

Anything else (a wrong role or password, a host that does not answer) is the
server's or libpq's error: printed on one line, never with the password, exit 1.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from typing import Any, NoReturn

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from taskworker.commands.context import load_settings
from taskworker.masking import mask_secrets


def stop(exc: BaseException, url: str) -> NoReturn:
    """Exit 1 with libpq's message on one line, without the password.

    libpq writes a line per address it tried (plus indented hints); the last one
    is the answer that ended the attempt.
    """
    lines = [line for line in str(exc).splitlines() if line.strip() and not line[0].isspace()]
    message = mask_secrets(" ".join((lines[-1] if lines else type(exc).__name__).split()), url)
    sys.exit(f"demo: cannot use DATABASE_URL: {message}")


def ports(dsn: dict[str, str]) -> list[int]:
    """The port of each host (an empty entry means the default, as for libpq)."""
    default = os.environ.get("PGPORT") or "5432"
    return [int(p or default) for p in (dsn.get("port") or default).split(",")]


def nothing_listens(dsn: dict[str, str], error: str) -> bool:
    """Whether every address `dsn` names refuses TCP connections or has no unix socket."""
    hosts = [h for h in (dsn.get("hostaddr") or dsn.get("host")
                         or os.environ.get("PGHOST", "")).split(",") if h]
    targets: list[tuple[int, Any]] = []  # (address family, address)
    try:
        port_list = ports(dsn)
    except ValueError:
        return False  # not a number: libpq's error says so
    for i, host in enumerate(hosts):
        port = port_list[i] if len(port_list) > 1 else port_list[0]
        if host.startswith("/"):
            targets.append((socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"))
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return False  # a name that does not resolve: libpq's error says so
        targets += [(family, address) for family, _, _, _, address in infos]
    if not hosts:  # libpq's default: the unix sockets it tried are quoted in its error
        targets = [(socket.AF_UNIX, path) for path in re.findall(r'"(/[^"]+)"', error)]
    for family, address in targets:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            try:
                s.connect(address)
            except (FileNotFoundError, ConnectionRefusedError):
                continue
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 on a host without IPv6
                    continue
            return False  # something listens (or does not answer at all)
    return bool(targets)


def main() -> None:
    url = load_settings().database_url  # exits 2 with one line if DATABASE_URL is malformed
    dsn = parse_dsn(url)
    try:
        psycopg2.connect(url, connect_timeout=3).close()
        print("ok", url, sep="\n")
        return
    except psycopg2.OperationalError as exc:
        error = exc
    dbname = dsn.get("dbname")
    if dbname and f'database "{dbname}" does not exist' in str(error):
        try:
            conn = psycopg2.connect(make_dsn(url, dbname="postgres"), connect_timeout=3)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            finally:
                conn.close()
        except psycopg2.Error as exc:
            stop(exc, url)
        print("created", url, sep="\n")
    elif nothing_listens(dsn, str(error)):
        print("absent", ports(dsn)[0], dbname or "postgres", sep="\n")
    else:
        stop(error, url)


if __name__ == "__main__":
    main()
