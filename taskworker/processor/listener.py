"""Wakes the fetcher when tasks are inserted, through LISTEN/NOTIFY.

A dedicated autocommit connection listens on the channel that the tasks table's
insert trigger notifies. The listener waits on the connection's socket, drains
`notifies`, and wakes the fetcher. A notification sent while the connection was
down is lost, so after every (re)connect the fetcher is woken once to catch up;
FETCH_INTERVAL polling stays as the safety net.
"""
from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.socket import wait_read

from .store import sql
from .db import (
    CONNECTION_ERRORS,
    RECENT_LOSSES,
    DatabaseUnavailable,
    Stopped,
    connect,
    first_line,
)
from .logs import log
from .settings import Settings

PING_EVERY = 10.0  # seconds of silence after which the connection is checked


class Listener:
    def __init__(self, settings: Settings, wake: Event,
                 should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.wake = wake
        self.should_stop = should_stop
        self.connected = False
        self.down_since: float | None = None  # monotonic time the connection was lost
        self.losses: deque[float] = deque(maxlen=RECENT_LOSSES)  # when it was lost
        self.notifications = 0
        self.reconnects = 0

    def run(self) -> None:
        delay = 0.1
        first = True
        while not self.should_stop():
            conn = None
            try:
                conn = connect(self.settings, name="taskworker listener")
                with conn.cursor() as cur:
                    cur.execute(sql.listen)
                self.connected = True
                self.down_since = None
                if not first:
                    self.reconnects += 1
                    log.info("Reconnected to database (listener)")
                first = False
                delay = 0.1
                self.wake.set()  # catch up on what was inserted while away
                self._listen(conn)
            except (DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                if self.connected or first:
                    log.warning("Database connection lost (listener): %s; reconnecting",
                                first_line(exc))
                self.connected = False
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.losses.append(self.down_since)
                first = False
            finally:
                if conn is not None:
                    conn.close()
            if self.should_stop():
                raise Stopped("listener")
            gevent.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)

    def _listen(self, conn) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                wait_read(conn.fileno(), timeout=PING_EVERY)
            except TimeoutError:
                with conn.cursor() as cur:  # raises if the server went away
                    cur.execute("SELECT 1")
            conn.poll()
            if conn.notifies:
                self.notifications += len(conn.notifies)
                conn.notifies.clear()
                self.wake.set()
