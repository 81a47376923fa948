"""Keeps this process's leases alive.

Every third of LEASE_SECONDS one statement extends the lease of every task the
process holds (queued or running). A task the statement does not return was
taken away (its lease expired and another process rescued it): it is marked
lost, so a worker skips it if it has not started it yet.
"""
from __future__ import annotations

from collections.abc import Callable

import gevent

from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection
from .dispatch import Dispatch


class Heartbeat:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch,
                 should_stop: Callable[[], bool]) -> None:
        self.lease = settings.lease_seconds
        self.holder = holder
        self.dispatch = dispatch
        self.db = ReconnectingConnection(settings, "heartbeat", should_stop=should_stop)

    def run(self) -> None:
        while True:
            gevent.sleep(self.lease / 3)
            self.beat()

    def beat(self) -> None:
        ids = self.dispatch.held_ids()
        if not ids:
            return
        kept = store.heartbeat(self.db, holder=self.holder, ids=ids, lease=self.lease)
        self.dispatch.mark_lost([i for i in ids if i not in kept])
