"""scripts/demo.sh, run the way a user runs it: `bash scripts/demo.sh`, stopped by Ctrl+C.

The script installs taskworker into `.venv` only when `.venv/bin/taskworker` is
missing, and works from the folder above its own. So each test runs a copy of
scripts/ in a temp checkout whose `.venv/bin/python` and `.venv/bin/taskworker`
are wrappers around this interpreter (which has taskworker installed), with
`tests` linked to the real folder for pgserver.py. TMPDIR is a folder of the
test's own, so anything the demo leaves behind in it shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgserver import free_port
from psycopg2.extensions import make_dsn
from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent


class Demo:
    """`bash scripts/demo.sh` in its own process group, output in a log file."""

    def __init__(self, checkout: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", str(checkout / "scripts" / "demo.sh")], env=env, cwd=checkout,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # a process group, like a terminal's job

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        """Poll the output for `pattern` (regex); fail early if the script exits."""
        def seen() -> bool:
            exited = self.proc.poll() is not None  # (read the output after this)
            if re.search(pattern, self.output(), re.MULTILINE):
                return True
            if exited:
                raise AssertionError(f"{pattern!r} not in demo output (exited "
                                     f"{self.proc.returncode}):\n{self.output()}")
            return False

        wait_until(seen, timeout, lambda: f"{pattern!r} in the demo output:\n{self.output()}",
                   interval=0.1)

    def ctrl_c(self) -> None:
        """SIGINT to the whole process group, as a terminal's Ctrl+C does."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"demo still running after {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        """Teardown: Ctrl+C, then SIGTERM (pgserver removes its cluster on it), then SIGKILL."""
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        # Stragglers of the group (e.g. pgserver after bash died) get the same treatment.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(AssertionError):  # (then the next signal)
                wait_until(lambda: not group_alive(self.proc.pid), 15,
                           "the demo's stragglers to exit")


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (a zombie is not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_clusters_under(folder: Path) -> None:
    """Last resort: immediate shutdown of any postgres whose data dir is in `folder`.

    The postmaster has its own session (pg_ctl starts it so), so killing the
    demo's process group does not reach it.
    """
    for pidfile in folder.glob("*/data/postmaster.pid"):
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            continue
        with contextlib.suppress(AssertionError):  # (a last resort: go on regardless)
            wait_until(lambda: not pidfile.exists(), 5, f"{pidfile} to go")  # noqa: B023


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
    return True


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose .venv is this interpreter: scripts/ copied, tests/ linked."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / "tests").symlink_to(REPO / "tests")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, args in (("python", ""), ("taskworker", " -m taskworker")):
        wrapper = venv_bin / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}"{args} "$@"\n')
        wrapper.chmod(0o755)
    return root


@pytest.fixture
def demo_tmpdir() -> Iterator[Path]:
    """The demo's TMPDIR: initdb runs as `postgres` when we are root, so not in tmp_path
    (pytest makes that 0700) but in a folder of its own that others may traverse."""
    folder = Path(tempfile.mkdtemp(prefix="tw-demo-tmp-"))
    folder.chmod(0o711)
    yield folder
    stop_clusters_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


RunDemo = Callable[[str], Demo]


@pytest.fixture
def run_demo(checkout: Path, demo_tmpdir: Path, tmp_path: Path) -> Iterator[RunDemo]:
    """Factory: run_demo(database_url) starts the demo; teardown stops whatever is left."""
    started: list[Demo] = []

    def start(database_url: str) -> Demo:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PG") or k == "PG_BINDIR"}  # no PGHOST etc. from outside
        env.update(DATABASE_URL=database_url, TMPDIR=str(demo_tmpdir), PYTHONUNBUFFERED="1",
                   TASK_MIN_SECONDS="0", TASK_MAX_SECONDS="0")
        demo = Demo(checkout, env, tmp_path / f"demo-{len(started) + 1}.log")
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.stop()


def test_wrong_role_prints_the_server_error_and_starts_no_cluster(
        pg_base_url: str, run_demo: RunDemo, demo_tmpdir: Path) -> None:
    role = "tw_no_such_role_" + secrets.token_hex(4)
    demo = run_demo(make_dsn(pg_base_url, user=role, password="s3cret-pw"))

    code = demo.wait(timeout=30)
    out = demo.output()
    assert code != 0, out
    assert f'role "{role}" does not exist' in out
    assert len([line for line in out.splitlines() if "does not exist" in line]) == 1, out
    assert "s3cret-pw" not in out
    assert "throwaway" not in out
    assert "Migration" not in out  # it stopped before migrate
    assert list(demo_tmpdir.iterdir()) == []
    assert processes_mentioning(str(demo_tmpdir)) == []


def test_nothing_listening_starts_a_throwaway_cluster_on_that_port_and_ctrl_c_removes_it(
        run_demo: RunDemo, demo_tmpdir: Path) -> None:
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/demo_x"
    demo = run_demo(url)

    demo.wait_for(rf"throwaway cluster on port {port}", timeout=30)
    demo.wait_for(r"\] Task ID: \d+ processed with status", timeout=90)
    out = demo.output()
    assert "Migration completed successfully" in out
    assert f"Connecting to database: {url}" in out  # that port, that database
    assert listening(port)

    demo.ctrl_c()
    code = demo.wait(timeout=60)
    out = demo.output()
    assert code == 0, out
    assert "shutdown successful" in out
    assert not listening(port), "the throwaway cluster is still up"
    assert processes_mentioning(str(demo_tmpdir)) == []
    assert list(demo_tmpdir.iterdir()) == [], "the demo left files in TMPDIR"
