"""Subprocesses of a benchmark run: started in their own session, output to a
file, always stopped again (run.py calls stop_all() on any exit).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence

_live: list[Proc] = []
_workdir: str | None = None


def workdir(sub: str = "") -> str:
    """Scratch space of this run (children's logs, an empty cwd, profiles), made
    on first use and removed by remove_workdir() at the end."""
    global _workdir
    if _workdir is None:
        _workdir = tempfile.mkdtemp(prefix="twbench_")
    path = os.path.join(_workdir, sub) if sub else _workdir
    os.makedirs(path, exist_ok=True)
    return path


class Proc:
    """One child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        logdir = workdir("logs")
        self.log_path = os.path.join(logdir, f"{name}-{len(os.listdir(logdir))}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in _forget()
        # A session of its own: Ctrl+C in the terminal reaches only the harness,
        # which then stops the children in order.
        self.popen = subprocess.Popen(list(args), env=dict(env) if env is not None else None,
                                      cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        self.started = time.monotonic()
        self.killed = False
        _live.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def vm_hwm_kb(self) -> int | None:
        """Peak resident set size so far (VmHWM), in kB; None once it has exited."""
        return read_vm_hwm_kb(self.pid)

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._forget()
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.send(sig)
            self.reap(timeout, 10)
        self._forget()
        return self.popen.returncode

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def reap(self, timeout: float, kill_wait: float) -> None:
        """Wait up to `timeout` for the process to exit, then SIGKILL it."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self.popen.kill()
            self.popen.wait(kill_wait)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _forget(self) -> None:
        if self in _live:
            _live.remove(self)
        if not self._log.closed:
            self._log.close()


def read_vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run(name: str, args: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float = 300.0) -> tuple[int, str]:
    """Run a child to completion (killed after `timeout`): (exit code, output)."""
    p = Proc(name, args, env, cwd)
    code = p.wait(timeout)
    if code is None:
        code = p.stop(signal.SIGTERM, 5.0)
        return code, p.output() + f"\n[killed after {timeout:.0f}s]"
    return code, p.output()


def remove_workdir() -> None:
    global _workdir
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)
        _workdir = None


def stop_all() -> None:
    """Stop every child still running: SIGINT, a short grace period, SIGKILL."""
    procs = list(_live)
    for p in procs:
        p.send(signal.SIGINT)
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.reap(max(0.1, deadline - time.monotonic()), 5)
        p._forget()


class BenchError(Exception):
    """A step of the benchmark could not be done; str() says which and why."""


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant (from /proc/<pid>/task/*/children)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return tree
