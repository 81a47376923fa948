"""Which serve process exports the gauges about the whole tasks table (queue
depth, backlog): the holder of the one row of taskworker_metrics_reporter.

The table is the same for every process, so if each exported those gauges, a
dashboard's `sum()` over the processes would count it once per process. Every
process with METRICS_PORT asks for the row before each sample; its holder keeps
it by renewing it, another takes it only once it has gone `ttl` seconds without
a renewal (the holder was killed, frozen or cut off) or was handed back at a
clean shutdown. The others neither sample nor export those gauges, which also
spares the database their counting statements.

A row rather than a session advisory lock: that lock belongs to one server
connection, which PgBouncer in transaction mode hands to other clients between
transactions; the row is one statement each time, through any pooler. Its
expiry is the database's clock (now()), so hosts' clocks never disagree on it.

A holder cut off from the database cannot learn that its row ran out and was
taken: it stops exporting by itself `ttl` seconds after it sent its last renewal
that succeeded (its monotonic clock), which is no later than the row's expiry,
so two processes never export the table's gauges at the same time.
"""
from __future__ import annotations

import time

from ..logs import log
from ..store import processes
from ..store.database import Database


class ReporterLease:
    def __init__(self, holder: str, ttl: float) -> None:
        self.holder = holder
        self.ttl = ttl
        self._valid_until = 0.0  # monotonic time until which this process may export
        self._had = False  # the last claim succeeded

    def renew(self, db: Database) -> bool:
        """Take or keep the row; True while this process is the reporter."""
        sent = time.monotonic()
        has = processes.claim_reporter(db, self.holder, self.ttl)
        self._valid_until = sent + self.ttl if has else 0.0
        if has != self._had:
            log.info("Reporting the table's metrics (queue depth, backlog) for every process"
                     if has else "Another process reports the table's metrics now")
        self._had = has
        return has

    def held(self) -> bool:
        """May this process export the table's gauges now?"""
        return time.monotonic() < self._valid_until

    def release(self, db: Database) -> None:
        """Stop reporting and hand the row back (shutdown): the next process to ask
        takes it at once."""
        self._valid_until, self._had = 0.0, False
        processes.release_reporter(db, self.holder)
