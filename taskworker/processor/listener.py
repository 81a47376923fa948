"""Wakes the fetcher when tasks are inserted, through LISTEN/NOTIFY.

A connection of its own listens on the channel that the tasks table's insert
trigger (and `wake_others`) notifies. The listener waits on the connection's
socket, drains `notifies`, and wakes the fetcher. A notification sent while the
connection was down is lost, so after every (re)connect the fetcher is woken
once to catch up; FETCH_INTERVAL polling stays as the safety net.

The connection is a ReconnectingConnection like every other service's (the same
backoff, the same log lines, the same entry in /healthz), but the listener
sends its statements on the raw connection: a silent reconnect inside a query
would leave a new connection that is not listening.
"""
from __future__ import annotations

from collections.abc import Callable

from gevent.socket import wait_read

from ..settings import Settings
from ..store import tasks as store
from ..store.connection import CONNECTION_ERRORS, ReconnectingConnection
from ..store.database import Direct, PgConnection
from .dispatch import Dispatch

PING_EVERY = 10.0  # seconds of silence after which the connection is checked


class Listener:
    def __init__(self, settings: Settings, dispatch: Dispatch,
                 should_stop: Callable[[], bool]) -> None:
        self.dispatch = dispatch
        self.should_stop = should_stop
        self.db = ReconnectingConnection(settings, "listener", should_stop=should_stop)
        self._notifications = 0

    def stats(self) -> dict[str, int]:
        return {"notifications": self._notifications}

    def run(self) -> None:
        while not self.should_stop():
            conn = self.db.connection()  # waits out an outage, with backoff
            try:
                store.listen(Direct(conn))
                self.db.worked()
                self.dispatch.wake()  # catch up on what was inserted while away
                self._listen(conn)
            except CONNECTION_ERRORS as exc:
                self.db.lost(exc)

    def _listen(self, conn: PgConnection) -> None:
        while True:
            try:
                wait_read(conn.fileno(), timeout=PING_EVERY)
            except TimeoutError:
                store.ping(Direct(conn))  # raises if the server went away
            conn.poll()
            if conn.notifies:
                self._notifications += len(conn.notifies)
                conn.notifies.clear()
                self.dispatch.wake()
