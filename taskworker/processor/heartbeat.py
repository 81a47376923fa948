"""Keeps this process's leases alive.

Every third of LEASE_SECONDS one statement extends the lease of every task the
process holds (queued or running). A task the statement does not return was
taken away (its lease expired and another process rescued it): it is marked
lost, so a worker skips it if it has not started it yet.
"""
from __future__ import annotations

from collections.abc import Callable

import gevent

from .store import sql
from .db import Link
from .inflight import InFlight
from .settings import Settings


class Heartbeat:
    def __init__(self, settings: Settings, holder: str, inflight: InFlight,
                 should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.holder = holder
        self.inflight = inflight
        self.link = Link(settings, "heartbeat", should_stop=should_stop)
        self.beats = 0

    def run(self) -> None:
        while True:
            gevent.sleep(self.settings.lease_seconds / 3)
            self.beat()

    def beat(self) -> None:
        ids = self.inflight.ids()
        if not ids:
            self.beats += 1
            return
        rows = self.link.query(sql.heartbeat, {
            "ids": ids, "holder": self.holder, "lease": self.settings.lease_seconds})
        kept = {row[0] for row in rows}
        for task_id in ids:
            if task_id not in kept:
                self.inflight.mark_lost(task_id)
        self.beats += 1
