"""Wakes the fetcher when tasks are inserted, through LISTEN/NOTIFY.

A connection of its own listens on the channel that the tasks table's insert
trigger (and `wake_others`) notifies. The listener waits on the connection's
socket, drains `notifies`, and wakes the fetcher. A notification sent while the
connection was down is lost, so after every (re)connect the fetcher is woken
once to catch up; FETCH_INTERVAL polling stays as the safety net.

The connection is a ReconnectingConnection like every other service's (the same
backoff, the same log lines, the same entry in /healthz), but the listener
sends its statements on the raw connection: a silent reconnect inside a query
would leave a new connection that is not listening. With LISTEN_DATABASE_URL it
connects there (a direct connection past a transaction pooler) and everything
else uses DATABASE_URL. When its process steps back for want of connection slots
(shortage.py), the listener lets go of its connection (`let_go`), and connects
again once the process has the connections it needs to claim.

LISTEN through a pooler in transaction mode (PgBouncer's usual setting) fails
silently: the LISTEN lands on a server connection the pooler hands to someone
else, and notifications never arrive. The listener says so in one line when it
sees a pooler (the backend pid the connection announced at start differs from
the server's own: a pooler announces one of its own making), and when its own
test notification, sent once after the first LISTEN, does not come back within
PROBE_WAIT. Polling every FETCH_INTERVAL still finds the work.

The insert trigger notifies only while some process is marked asleep
(sleeping.py), and not once the notification queue passes
taskworker.notify_queue_limit (a listener somewhere that stopped reading holds
it back; a full queue would fail every notifying commit). The listener's check
after PING_EVERY of silence asks that too, and wakes the fetcher, which then
polls every QUEUE_FULL_POLL while the queue stays that full.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import gevent
from gevent.socket import wait_read

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import CONNECTION_ERRORS, NoAnswer, ReconnectingConnection
from ..store.database import Direct, PgConnection
from .dispatch import Dispatch
from .heartbeat import stop_cancelled

PING_EVERY = 5.0  # seconds of silence after which the connection (and the queue) is checked
CANCEL_CHANNEL = "taskworker_cancel"  # payload: the id `taskworker cancel` asked to stop
PROBE_WAIT = 2.0  # seconds the listener waits for its own test notification


class LetGo(Exception):
    """Raised in the listener's greenlet: its process steps back for want of
    connection slots (shortage.py), and the listener closes its connection."""


class Listener:
    def __init__(self, settings: Settings, dispatch: Dispatch,
                 should_stop: Callable[[], bool]) -> None:
        self.dispatch = dispatch
        self.should_stop = should_stop
        self.db = ReconnectingConnection(settings, "listener", should_stop=should_stop,
                                         url=settings.listen_database_url)
        self._notifications = 0
        self._probe: str | None = f"probe {uuid.uuid4().hex}"  # None once it came back
        self._probe_sent = 0.0
        self._greenlet: gevent.Greenlet | None = None  # the one running `run`

    def stats(self) -> dict[str, int]:
        return {"notifications": self._notifications}

    def run(self) -> None:
        self._greenlet = gevent.getcurrent()
        while not self.should_stop():
            try:
                self._connect_and_listen()
            except LetGo:
                self.db.close()

    def let_go(self) -> bool:
        """Close the connection (its process steps back for want of connection
        slots): the listener gives up whatever it was doing, and waits to
        connect again. Whether it had a connection."""
        if self._greenlet is None or not self.db.is_open:
            return False
        self._greenlet.kill(LetGo(), block=False)
        return True

    def _connect_and_listen(self) -> None:
        conn = self.db.connection()  # waits out an outage, with backoff
        try:
            with gevent.Timeout(self.db.deadline, NoAnswer):
                store.listen(Direct(conn))
                if self._probe and not self._probe_sent:
                    if store.backend_pid(Direct(conn)) != conn.info.backend_pid:
                        self._probe_lost("LISTEN goes through a connection pooler (the "
                                         "server's backend pid is not the one announced)")
                    else:
                        store.notify_self(Direct(conn), self._probe)
                        self._probe_sent = time.monotonic()
            self.db.worked()
            self.dispatch.wake()  # catch up on what was inserted while away
            self._listen(conn)
        except NoAnswer:
            self.db.lost(NoAnswer(f"no answer within {self.db.deadline:g}s"))
        except CONNECTION_ERRORS as exc:
            self.db.lost(exc)

    def _listen(self, conn: PgConnection) -> None:
        while True:
            conn.poll()  # (a notification may have come with a reply already)
            if conn.notifies:
                if any(n.payload == self._probe for n in conn.notifies):
                    self._probe = None
                self._notifications += len(conn.notifies)
                cancel = [int(n.payload) for n in conn.notifies
                          if n.channel == CANCEL_CHANNEL and n.payload.isdigit()]
                conn.notifies.clear()
                if cancel:
                    stop_cancelled(self.dispatch, cancel)
                self.dispatch.inserted()
            wait = PING_EVERY
            if self._probe:
                wait = max(self._probe_sent + PROBE_WAIT - time.monotonic(), 0.0)
            try:
                wait_read(conn.fileno(), timeout=wait)
            except TimeoutError:
                if self._probe:
                    self._probe_lost("LISTEN gets no notifications on this connection")
                else:
                    with gevent.Timeout(self.db.deadline, NoAnswer):  # (raises if the
                        full = store.notify_queue_full(Direct(conn))  # server went away)
                    if full:  # inserts do not notify (migration 018): the fetcher polls
                        self.dispatch.wake()

    def _probe_lost(self, what: str) -> None:
        self._probe = None
        log.warning("%s: in transaction mode (PgBouncer's usual) notifications never arrive; "
                    "set LISTEN_DATABASE_URL to a direct connection, or LISTEN=false; "
                    "polling every FETCH_INTERVAL meanwhile", what)
