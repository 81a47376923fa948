"""Naming what holds vacuum back.

A transaction left open (a report, a psql session idle in transaction, a
standby's hot_standby_feedback behind a long query, a forgotten prepared
transaction) pins the database's xmin horizon: no row deleted or updated since
it began can be removed. Every claim and completion leaves an old row version
behind in the claim indexes, so while the horizon is pinned each claim walks
more of them and gets slower; part 19's soak measured 28x the PostgreSQL CPU per
task after 6 minutes at 5,000 tasks/s. Nothing taskworker can do in its own
statements removes those versions, but it can say at once who holds them, which
is what an operator needs to end it, in the log and not only in a slow graph.

The heartbeat looks at every beat (a third of LEASE_SECONDS) on its own
connection. A holder (a session, slot or prepared transaction at one xid) seen
for HELD_AFTER seconds gets one warning; its end gets one line with how long it
was seen. Short transactions come and go between two looks and are never named.
The metrics export how long the oldest holder has been seen, to alert on.
A server that refuses this role one of the views looked at (a managed service
may) gets one warning, and the watch stops: it must never cost the heartbeat,
whose renewals keep the leases.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2

from ..logs import log
from ..store import tasks as store
from ..store.database import Database, first_line
from ..store.tasks import HorizonHolder

HELD_AFTER = 60.0  # seconds a holder must be seen before it is named


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _describe(h: HorizonHolder) -> str:
    known = [f"{label} {value}" for label, value in
             (("user", h.user), ("application", h.application)) if value]
    if h.state:
        known.append(h.state)
    return h.who + (f" ({', '.join(known)})" if known else "")


class HorizonWatch:
    """Follows the holders of the xmin horizon from one look to the next."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, HorizonHolder]] = {}
        self._named: set[tuple[str, str]] = set()
        self._off = False  # the server refused a view: not looking again

    def stats(self) -> dict[str, float]:
        """How long the oldest holder now seen has been seen (0: none; the metrics'
        taskworker_vacuum_held_seconds, to alert on)."""
        now = self._clock()
        return {"held_seconds": max((now - since for since, _ in self._seen.values()),
                                    default=0.0)}

    def look(self, db: Database) -> None:
        if self._off:
            return
        now = self._clock()
        try:
            holders = store.horizon_holders(db)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise  # (the connection's: its owner reconnects)
        except psycopg2.Error as exc:
            self._off = True
            log.warning("Cannot see what holds vacuum back (%s); not looking again",
                        first_line(exc))
            return
        current = {(h.who, h.xid): h for h in holders}
        for key in [k for k in self._seen if k not in current]:
            since, holder = self._seen.pop(key)
            if key in self._named:
                self._named.discard(key)
                log.info("Vacuum no longer held back by %s (seen for %s)",
                         _describe(holder), _duration(now - since))
        for key, holder in current.items():
            since, _ = self._seen.setdefault(key, (now, holder))
            if key not in self._named and now - since >= HELD_AFTER:
                self._named.add(key)
                log.warning(
                    "Vacuum held back for %s by %s: dead rows of tasks cannot be removed "
                    "and claims slow down until it ends (see idle_in_transaction_session_"
                    "timeout and statement_timeout)", _duration(now - since),
                    _describe(holder))
