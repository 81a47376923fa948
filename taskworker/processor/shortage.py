"""What a process does when the server has no connection slot for it: it steps
back, so that another process can go on.

A serve process claims only with three connections open: the exchange's two
lanes (`fetcher`, `completer`) and the heartbeat's. Processes that share a
connection limit (a role's or a database's CONNECTION LIMIT, the server's
max_connections), each holding some of their three and waiting for the rest,
would wait for ever: every slot taken, no process able to claim. So when one of
the three cannot be opened for want of a slot (NoFreeSlot), the process steps
back:

- it closes its connections (each as soon as no statement is on it), but what
  the work in progress needs: while it holds tasks, the writing lane (their
  outcomes, or their give backs) and the heartbeat (their leases). The heartbeat
  alone, without a writing lane, only for LEASE_SECONDS: leases renewed for
  outcomes that cannot be written would keep the tasks from every process. A
  statement the claiming lane is sending is given up (SteppedBack): the outcomes
  a claim carried go to the writing lane, and the exchange claims again later;
- for a random time (up to STEP_BACK_FIRST the first time, twice as long each
  time it has to step back again, up to STEP_BACK_MAX) it opens nothing;
- then it opens the heartbeat and the writing lane, then the claiming lane;
  once the three are open it claims again, and its other connections
  (listener, pruner, metrics, scheduler: none of them makes it step back) open.

The random waits drift the processes' attempts apart: one gets its three and
works while the others wait their turn. One line says when a process steps back
(then one a minute while it stays short), one when it resumes.

A process that cannot renew its leases gives back what it runs before they run
out (the lease guard, heartbeat.py) through its writing lane. With no writing
lane either, it cannot give anything back: the leases run out, and another
process rescues those tasks as it would a dead process's (its own outcomes for
them, written later, are fenced off).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from ..logs import log
from ..store.connection import Gate, ReconnectingConnection, SteppedBack, Stopped
from .listener import Listener

STEP_BACK_FIRST = 1.0  # seconds: the longest wait of a first step back
STEP_BACK_MAX = 8.0  # seconds: the longest wait of any
STILL_SHORT_EVERY = 60.0  # seconds between two lines while a shortage lasts

RUNNING, BACK, RESUMING = "running", "stepping back", "resuming"


class Shortage(Gate):
    """The gate of every connection of one process (see the module's docstring)."""

    def __init__(self, claiming: ReconnectingConnection, writing: ReconnectingConnection,
                 heartbeat: ReconnectingConnection, others: list[ReconnectingConnection],
                 listener: Listener | None, lease: float, holding: Callable[[], int],
                 resumed: Callable[[], None]) -> None:
        self.claiming, self.writing, self.heartbeat = claiming, writing, heartbeat
        self.needed = (heartbeat, writing, claiming)  # to claim; opened in this order
        self.others = others  # connections used through `query`, opened once it runs
        self.listener = listener  # (it holds its connection in a wait: see Listener.let_go)
        self.lease = lease
        self.holding = holding  # how many tasks it holds (claimed, outcome not written)
        self.resumed = resumed  # told when it runs again: the fetcher may claim
        self._state = RUNNING
        self._stopped = False  # shutdown: no more stepping back
        self._changed = Event()  # set (and replaced) at every change a wait may await
        self._bound = STEP_BACK_FIRST
        self._short_since: float | None = None  # monotonic: the shortage's first step back
        self._said_at = 0.0
        self._timer: gevent.Greenlet | None = None
        self._openers: dict[str, gevent.Greenlet] = {}
        for db in (*self.needed, *others, *([listener.db] if listener else [])):
            db.gate = self

    def running(self) -> bool:
        """Has the process the connections it needs to claim? (Not stepping back.)"""
        return self._state == RUNNING

    def stop(self) -> None:
        """Shutdown: no more stepping back. A process stepping back opens its
        writing lane (the final writes) and nothing else: its other connections'
        owners stop waiting as they stop."""
        self._stopped = True
        if self._timer is not None:
            self._timer.kill(block=False)
        self._notify()

    # --- the gate, asked by each connection

    def wait(self, db: ReconnectingConnection) -> None:
        """A statement on the claiming lane is given up rather than kept waiting
        while the process steps back (a claim may carry outcomes, which go to the
        writing lane instead: see Exchange.claim_loop)."""
        while not self._may_open(db):
            if self._stopped and db.should_stop():
                raise Stopped(db.name)
            if db is self.claiming and db.in_use and self._state == BACK:
                raise SteppedBack(db.name)
            self._changed.wait()

    def opened(self, db: ReconnectingConnection) -> bool:
        if self._state == BACK:
            return self._stopped or db in self._kept()
        self._notify()  # (the claiming lane waits for the other two)
        if self._state == RESUMING and all(d.is_open for d in self.needed):
            self._run()
        return True

    def no_slot(self, db: ReconnectingConnection) -> bool:
        if self._stopped or db not in self.needed:
            return False  # (the others back off on their own)
        if self._state != BACK:
            self._step_back(db)
        return True

    def _may_open(self, db: ReconnectingConnection) -> bool:
        if self._state == RUNNING:
            return True
        if self._state == BACK:
            return self._stopped and db is self.writing
        if db is self.claiming:
            return self.heartbeat.is_open and self.writing.is_open
        return db in self.needed

    # --- stepping back, resuming

    def _kept(self) -> tuple[ReconnectingConnection, ...]:
        """What the work in progress needs: while tasks are held, the writing
        lane and the heartbeat; the heartbeat without the writing lane only
        until that has been failing for LEASE_SECONDS."""
        if not self.holding():
            return ()
        failing_since = self.writing.state().failing_since
        if self.writing.is_open or failing_since is None \
                or time.monotonic() - failing_since < self.lease:
            return (self.writing, self.heartbeat)
        return ()

    def _step_back(self, short: ReconnectingConnection) -> None:
        kept = self._kept()
        closed = [db.name for db in (*self.needed, *self.others)
                  if db not in kept and db.let_go()]
        if self.listener is not None and self.listener.let_go():
            closed.append(self.listener.db.name)
        wait = random.uniform(0.0, self._bound)
        self._bound = min(self._bound * 2, STEP_BACK_MAX)
        self._state = BACK
        self._timer = gevent.spawn_later(wait, self._resume)
        now = time.monotonic()
        if self._short_since is None:
            self._short_since = self._said_at = now
            kept_open = [db.name for db in kept if db.is_open]
            log.warning("No connection slot for %s: stepping back, closed %s%s; trying "
                        "again in %.1fs, then at random times until %s are open",
                        short.name, ", ".join(closed) or "nothing",
                        f", kept {' and '.join(kept_open)} ({self.holding()} tasks held)"
                        if kept_open else "", wait, _names(self.needed))
        elif now - self._said_at >= STILL_SHORT_EVERY:
            self._said_at = now
            log.warning("Still short of connection slots after %.0fs (none for the %s "
                        "connection); trying again in %.1fs",
                        now - self._short_since, short.name, wait)

    def _resume(self) -> None:
        """The wait is over: open the three again (the claiming lane last)."""
        self._timer = None
        if self._stopped:
            return
        self._state = RESUMING
        self._notify()
        for db in self.needed:
            opener = self._openers.get(db.name)
            if not db.is_open and (opener is None or opener.dead):
                self._openers[db.name] = gevent.spawn(_open, db)
        if all(db.is_open for db in self.needed):
            self._run()

    def _run(self) -> None:
        self._state = RUNNING
        self._bound = STEP_BACK_FIRST
        self._notify()
        if self._short_since is not None:
            log.info("Resuming: %s are open again, after %.1fs short of connection slots",
                     _names(self.needed), time.monotonic() - self._short_since)
            self._short_since = None
        self.resumed()

    def _notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()


def _names(dbs: tuple[ReconnectingConnection, ...]) -> str:
    *first, last = [db.name for db in dbs]
    return f"{', '.join(first)} and {last}"


def _open(db: ReconnectingConnection) -> None:
    """Open `db` for its owner (which may be idle: the writing lane waits for
    outcomes, the heartbeat for its next beat)."""
    try:
        db.connection()
    except Stopped:  # (shutdown)
        pass
