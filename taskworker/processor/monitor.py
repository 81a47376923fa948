"""Noticing a handler that blocks the whole process.

Every greenlet, the hub included, runs on one thread: a handler that computes
without ever yielding (`while True: pass`, a long CPU-bound loop, a C call that
holds the GIL) stops everything else, TASK_TIMEOUT, the heartbeat, /healthz and
the signal handlers among them. Nothing cooperative can interrupt it, but a
real thread can see it: the hub moves a timestamp forward every TICK seconds,
and the monitor thread reads it.

- Blocked for BLOCKED_AFTER seconds: one line naming the worker, the task and
  where it is running (read from the main thread's frames).
- Unblocked again: one line with how long it lasted; the block is counted
  (`taskworker_hub_blocks_total`) and /healthz reports it for a while if it
  lasted longer than SHUTDOWN_TIMEOUT.
- A SIGINT or SIGTERM the hub cannot serve within SHUTDOWN_TIMEOUT (or a third
  Ctrl+C, after two were served) ends the process from the monitor thread with
  exit status 1: its tasks return to pending when their leases expire.

The monitor thread never touches gevent objects or the logging machinery (both
belong to the blocked thread): it reads plain values and writes its lines with
os.write.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import monkey

from ..logs import format_line, log

TICK = 0.1  # seconds between two moves of the hub's timestamp
WATCH_EVERY = 0.5  # seconds between two looks of the monitor thread (each takes the GIL)
BLOCKED_AFTER = 1.0  # seconds without a tick after which the hub counts as blocked
EXIT_FORCED = 1

# Before Python 3.13 (PEP 667), a frame's f_locals is a copy of its variables
# that the frame keeps until the next read of it or its own end: read in a
# worker's loop, it would keep the task running then, and its payload, alive
# for as long as the worker lives (an idle process kept a 60 MB payload). So it
# is emptied once read; the variables themselves are not touched (only a
# Python-level tracer writes the copy back).
SNAPSHOT_KEPT = sys.version_info < (3, 13)

_start_thread = monkey.get_original("_thread", "start_new_thread")
_thread_id = monkey.get_original("_thread", "get_ident")
_sleep = monkey.get_original("time", "sleep")


@dataclass
class Block:
    started: float  # monotonic time of the last tick before it
    where: str  # worker, task and code location, as far as known
    task_id: int | None
    worker: int | None
    ended: float | None = None


class HubMonitor:
    """The hub's side (the ticking timer, the record of blocks: only the hub
    writes it) and the monitor thread's side (noticing a block while it lasts,
    and the signals it keeps from being served)."""

    def __init__(self, shutdown_timeout: float, signals_served: Callable[[], int]) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.signals_served = signals_served  # SIGINT/SIGTERM the processor has handled
        self._tick = time.monotonic()
        self._main = _thread_id()  # (made in the main thread)
        self._blocks = 0
        self._blocked_seconds = 0.0
        self._last: Block | None = None  # the last block that ended
        self._seen: Block | None = None  # the block the thread sees now (set by the thread)
        self._signal_seen: float | None = None  # since when an unserved signal waits
        self._timer: Any = None  # a gevent timer watcher (gevent ships no type hints)

    # --- in the hub

    def start(self) -> None:
        self._loop = gevent.get_hub().loop
        self._timer = self._loop.timer(TICK, TICK, ref=False)
        self._timer.start(self._moved)
        _start_thread(self._watch, ())

    def _moved(self) -> None:
        """The hub runs: move the tick, and record the block it may have just
        come out of."""
        now = time.monotonic()
        gap, self._tick = now - self._tick, now
        if gap < BLOCKED_AFTER:
            return
        seen, self._seen = self._seen, None
        block = seen or Block(now - gap, "A greenlet", None, None)
        block.started, block.ended = now - gap, now
        self._blocks += 1
        self._blocked_seconds += gap
        self._last = block
        log.warning("%s stopped blocking the process after %.1fs",
                    block.where.split(" (at ")[0], gap,
                    extra={"task_id": block.task_id, "worker": block.worker})

    def stats(self) -> dict[str, float]:
        self._moved()
        return {"blocks": self._blocks, "blocked_seconds": round(self._blocked_seconds, 3)}

    def last_long_block(self, within: float) -> Block | None:
        """The last block, if it lasted longer than SHUTDOWN_TIMEOUT and ended less
        than `within` seconds ago."""
        self._moved()
        b = self._last
        if b is None or b.ended is None or time.monotonic() - b.ended > within:
            return None
        return b if b.ended - b.started > self.shutdown_timeout else None

    # --- in the monitor thread

    def _watch(self) -> None:
        while True:
            _sleep(WATCH_EVERY)
            tick = self._tick
            now = time.monotonic()
            if now - tick < BLOCKED_AFTER:
                self._signal_seen = None
                continue
            seen = self._seen
            if seen is None or seen.started != tick or self._running_other(seen):
                seen = self._describe(tick)
                self._seen = seen
                self._write(f"{seen.where} has blocked the whole process for "
                            f"{now - tick:.1f}s without yielding: no other task, timeout, "
                            "heartbeat or signal can run meanwhile", seen)
            self._check_signals(now, seen)

    def _running_other(self, seen: Block) -> bool:
        """Has the blocked thread moved on to another task (without yielding)? A
        greenlet of no task running now is not one: when a handler's block ends,
        timers overdue meanwhile (the heartbeat's) may run before the hub's tick,
        and the block stays the handler's."""
        now = self._describe(seen.started)
        return now.task_id is not None and now.task_id != seen.task_id

    def _check_signals(self, now: float, block: Block) -> None:
        if not self._loop.sig_pending:
            return
        if self._signal_seen is None:
            self._signal_seen = now
        third_ctrl_c = self.signals_served() >= 2
        if third_ctrl_c or now - self._signal_seen >= self.shutdown_timeout:
            why = ("a third shutdown signal" if third_ctrl_c else
                   f"a shutdown signal not handled within SHUTDOWN_TIMEOUT "
                   f"({self.shutdown_timeout:g}s)")
            self._write(f"Exiting now on {why}: {block.where} keeps the process blocked; "
                        "its tasks return to pending when their leases expire", block)
            os._exit(EXIT_FORCED)
    def _describe(self, since: float) -> Block:
        """Which worker and task the main thread is running, and where."""
        frame = sys._current_frames().get(self._main)
        innermost = frame
        task_id = worker = None
        while frame is not None:
            if frame.f_code.co_name == "loop":
                names = frame.f_locals
                found, task, n = "task" in names and "n" in names, names.get("task"), names.get("n")
                if SNAPSHOT_KEPT:
                    names.clear()
                del names
                if found:
                    task_id, worker = getattr(task, "id", None), n
                    break
            frame = frame.f_back
        where = "A greenlet" if task_id is None else f"[Worker {worker}] Task ID: {task_id}"
        if innermost is not None:
            code = innermost.f_code
            where += (f" (at {os.path.basename(code.co_filename)}:{innermost.f_lineno}"
                      f" in {code.co_name})")
        return Block(since, where, task_id, worker)

    def _write(self, message: str, block: Block) -> None:
        fields = {"task_id": block.task_id, "worker": block.worker}
        os.write(1, (format_line("warning", message, fields) + "\n").encode("utf-8", "replace"))
