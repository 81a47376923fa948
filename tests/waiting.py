"""The tests' one way to wait: poll a condition until it holds or a deadline
passes, then fail saying what was waited for. Every wait in tests/ goes through
`wait_until`, so that none hopes a fixed sleep was long enough on a loaded machine.

No imports of the other test modules (proc, invariants and pgserver use it); a
process given in `procs` is anything with `pid`, `proc` (a Popen), `log_path`
and `output()`, as proc.ServeProcess has.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


def wait_until(check: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               procs: Iterable[Any] = (), interval: float = 0.05,
               fail_on_exit: bool = False) -> Any:
    """Poll `check()` until it returns something truthy; return that.

    On timeout, fail with `what` (or what it returns, if callable) and the end
    of every process log. With `fail_on_exit`, fail at once when one of `procs`
    exits before `check()` holds (it will not hold any more). An exception
    `check()` raises ends the wait at once (the way to give up early on a
    condition of its own).
    """
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        exited = [p for p in procs if fail_on_exit and p.proc.poll() is not None]
        value = check()  # after the exit check: a last line written on exit counts
        if value:
            return value
        if exited:
            said = what() if callable(what) else what
            p = exited[0]
            raise AssertionError(f"serve pid {p.pid} exited ({p.proc.returncode}) before "
                                 f"{said}:\n{tail(p.output())}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log_path} (pid {p.pid}, exit {p.proc.poll()}):\n"
                             f"{tail(p.output())}" for p in procs)
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said}\n{logs}")
        time.sleep(interval)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
