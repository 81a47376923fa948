"""Run the taskworker CLI as a subprocess, the way a user does.

Signals are process-wide and gevent patches the whole interpreter, so tests
never import or patch taskworker in the pytest process: they run
`python -m taskworker ...` in a child with its own environment and a temp cwd
(so a developer's `.env` in the checkout is not picked up via the cwd).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from waiting import wait_until

CLI = [sys.executable, "-m", "taskworker"]


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return os.environ + unbuffered output + `overrides`."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(overrides or {})}


def importable(folder: Path, modules: Mapping[str, str] | None = None) -> dict[str, str]:
    """PYTHONPATH with `folder` first, for a child to import modules from it;
    `modules` (name -> source) are written there first, the folder created."""
    if modules is not None:
        folder.mkdir()
        for name, source in modules.items():
            (folder / f"{name}.py").write_text(source)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def run_cli(args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60,
            input: str | None = None, cwd: str | None = None) -> tuple[int, str, str]:
    """Run `taskworker *args` to completion; return (exit code, stdout, stderr).

    `env` overrides os.environ. `cwd` defaults to a fresh empty temp dir.
    Raises subprocess.TimeoutExpired (child killed) after `timeout` seconds.
    """
    with tempfile.TemporaryDirectory(prefix="tw-cli-") as tmp:
        done = subprocess.run([*CLI, *args], env=child_env(env), cwd=cwd or tmp, input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr


def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    """`taskworker *args` against `db_url` (run_cli with DATABASE_URL set)."""
    return run_cli(list(args), env={"DATABASE_URL": db_url})


class ServeProcess:
    """A running `taskworker serve` whose stdout+stderr go to a log file."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: str,
                 log_path: str, command: Sequence[str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        """`python -m taskworker serve *args`, or `command` as it is when given;
        behind `prefix` when given (e.g. `ip netns exec NAME`, which execs the
        command in place, so `pid` is still the serve process's own)."""
        self.log_path = log_path
        argv = list(command) if command is not None else [*CLI, "serve", *args]
        argv = [*prefix, *argv]
        with open(log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(argv, env=child_env(env), cwd=cwd,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def output(self) -> str:
        """Everything the process has written so far."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Poll the log until `pattern` (regex, MULTILINE) matches; return the match.

        Fails early if the process exits without printing it.
        """
        regex = re.compile(pattern, re.MULTILINE)
        return wait_until(lambda: regex.search(self.output()), timeout,
                          f"{pattern!r} in the output", [self], fail_on_exit=True)

    def signal(self, sig: int) -> None:
        """Send `sig` (e.g. signal.SIGINT) to the process."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        """Wait for exit and return the exit code; AssertionError with the log on timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"serve still running after {timeout}s:\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL the process if it is still alive and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


ServeFactory = Callable[..., ServeProcess]  # the `serve` fixture: serve(db_url, env=, args=)
