"""A throwaway PgBouncer in front of a test server, in transaction mode, with its
stock settings otherwise (no `ignore_startup_parameters`): what users run.

`bouncer(server_url)` starts one on a free port (as the `postgres` OS user when
we are root: PgBouncer refuses to run as root), trusting any user the server
trusts, and yields a function that turns a server URL into the same URL through
the bouncer. Stopped and removed afterwards. No pytest dependency.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import psycopg2
from pgserver import SERVER_USER, free_port
from psycopg2.extensions import make_dsn, parse_dsn

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return os.path.exists(BINARY)


@contextlib.contextmanager
def bouncer(server_url: str, users: tuple[str, ...] = ("postgres",),
            pool_mode: str = "transaction") -> Iterator[Callable[[str], str]]:
    """Start PgBouncer in front of `server_url`'s server; yield url -> url via it."""
    server = parse_dsn(server_url)
    port = free_port()
    folder = tempfile.mkdtemp(prefix="tw-pgbouncer-")
    with open(os.path.join(folder, "users.txt"), "w") as f:
        f.writelines(f'"{user}" ""\n' for user in users)
    with open(os.path.join(folder, "pgbouncer.ini"), "w") as f:
        f.write(f"""[databases]
* = host={server.get("host", "127.0.0.1")} port={server.get("port", "5432")}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = {pool_mode}
max_client_conn = 200
default_pool_size = 20
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
""")
    args = [BINARY, os.path.join(folder, "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, SERVER_USER)
        for name in os.listdir(folder):
            shutil.chown(os.path.join(folder, name), SERVER_USER)
        args = ["runuser", "-u", SERVER_USER, "--", *args]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def via(url: str) -> str:
        return make_dsn(url, host="127.0.0.1", port=port, sslmode="disable")

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg2.connect(via(server_url), connect_timeout=2).close()
                break
            except psycopg2.OperationalError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = _read(os.path.join(folder, "pgbouncer.log"))
                    raise RuntimeError(f"pgbouncer did not start: {exc}\n{log}") from None
                time.sleep(0.1)
        yield via
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # (as root, runuser passes it on)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()[-3000:]
    except OSError:
        return ""
