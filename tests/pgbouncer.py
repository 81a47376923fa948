"""A throwaway PgBouncer in front of a test server, in transaction mode, with its
stock settings otherwise (no `ignore_startup_parameters`): what users run.

`bouncer(server_url)` starts one on a free port (as the `postgres` OS user when
we are root: PgBouncer refuses to run as root), trusting any user the server
trusts, and yields a function that turns a server URL into the same URL through
the bouncer. Stopped and removed afterwards. No pytest dependency.

It can also run inside a network namespace (`prefix=["ip", "netns", "exec", NAME]`,
as the benchmark's test hosts of tests/hosts.py do), listening on an address there;
it is then checked over a unix socket in its folder, which any namespace reaches.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence

import psycopg2
from pgserver import SERVER_USER, free_port
from psycopg2.extensions import make_dsn, parse_dsn
from waiting import wait_until

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return os.path.exists(BINARY)


@contextlib.contextmanager
def bouncer(server_url: str, users: tuple[str, ...] = ("postgres",),
            pool_mode: str = "transaction", listen_addr: str = "127.0.0.1",
            port: int | None = None, prefix: Sequence[str] = (), max_client_conn: int = 200,
            default_pool_size: int = 20) -> Iterator[Callable[[str], str]]:
    """Start PgBouncer in front of `server_url`'s server; yield url -> url via it.

    It listens on `listen_addr`:`port` (default a free port on 127.0.0.1) and runs
    behind `prefix` (e.g. `ip netns exec NAME`: then `port` must be given).
    """
    server = parse_dsn(server_url)
    port = port or free_port()
    folder = tempfile.mkdtemp(prefix="tw-pgbouncer-")
    with open(os.path.join(folder, "users.txt"), "w") as f:
        f.writelines(f'"{user}" ""\n' for user in users)
    with open(os.path.join(folder, "pgbouncer.ini"), "w") as f:
        f.write(f"""[databases]
* = host={server.get("host", "127.0.0.1")} port={server.get("port", "5432")}

[pgbouncer]
listen_addr = {listen_addr}
listen_port = {port}
unix_socket_dir = {folder if prefix else ""}
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = {pool_mode}
max_client_conn = {max_client_conn}
default_pool_size = {default_pool_size}
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
""")
    args = [BINARY, os.path.join(folder, "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, SERVER_USER)
        for name in os.listdir(folder):
            shutil.chown(os.path.join(folder, name), SERVER_USER)
        args = ["runuser", "-u", SERVER_USER, "--", *args]
    # Its log goes to logfile; it writes the same to stderr, which nobody reads (a pipe
    # would fill up over a long run and stall it).
    proc = subprocess.Popen([*prefix, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def via(url: str) -> str:
        return make_dsn(url, host=listen_addr, port=port, sslmode="disable")

    # From here: over TCP, unless it listens in another network namespace.
    check_url = make_dsn(server_url, host=folder, port=port) if prefix else via(server_url)

    def accepting() -> bool:
        exited = proc.poll() is not None  # (checked before the connection attempt)
        try:
            psycopg2.connect(check_url, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError as exc:
            if exited:
                log = _read(os.path.join(folder, "pgbouncer.log"))
                raise RuntimeError(f"pgbouncer exited: {exc}\n{log}") from None
            return False

    try:
        wait_until(accepting, 10, lambda: "pgbouncer to accept connections\n"
                   + _read(os.path.join(folder, "pgbouncer.log")), interval=0.1)
        yield via
    finally:
        if proc.poll() is None:
            # To PgBouncer itself: runuser (as root) does not pass SIGINT on, and
            # killing runuser would leave PgBouncer running.
            pid = _pid(os.path.join(folder, "pgbouncer.pid")) or proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()[-3000:]
    except OSError:
        return ""
