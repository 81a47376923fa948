"""This process's row in taskworker_processes: recorded at start, refreshed by
every heartbeat, deleted at a clean shutdown.

The row is how `status`, the metrics and the dashboard know who serves which
queues and task names. It is a report, not a lock: failing to write it never
stops serve (a warning says so once, and the next beat tries again).
"""
from __future__ import annotations

import os
import socket
from typing import Any

import gevent
import psycopg2

from .. import registry
from ..logs import log
from ..settings import Settings
from ..store import processes
from ..store.database import Database, first_line


class Presence:
    def __init__(self, settings: Settings, holder: str) -> None:
        self.settings = settings
        self.holder = holder
        self._gone = False  # unregistered: the heartbeat must not record it again
        self._warned: str | None = None

    def details(self) -> dict[str, Any]:
        """What the row says: read at each registration, after TASK_MODULES are imported."""
        tasks = registry.registered()
        return {
            "holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
            "queues": self.settings.queue_names, "tasks": sorted(tasks),
            "default_handler": self.settings.default_handler is not None,
            "schedules": {name: t.schedule for name, t in sorted(tasks.items())
                          if t.schedule is not None},
            "lease_seconds": self.settings.lease_seconds, "listens": self.settings.listen,
        }

    def register(self, db: Database) -> None:
        """Record this process (and delete the rows of long-gone ones), bounded by
        the time a statement and a connection may take."""
        timeout = self.settings.statement_timeout + self.settings.connect_timeout
        self._quietly(db, timeout, self._register)

    def touch(self, db: Database) -> None:
        """The heartbeat's sign of life: one UPDATE by primary key; registers again
        when the row is gone (reaped while this process was frozen)."""
        def beat(db: Database) -> None:
            if not processes.touch(db, self.holder) and not self._gone:
                self._register(db)
        self._quietly(db, None, beat)

    def unregister(self, db: Database, timeout: float) -> None:
        """Delete this process's row (a clean shutdown); from now on no beat records it."""
        self._gone = True
        self._quietly(db, timeout, lambda db: processes.unregister(db, self.holder))

    def _register(self, db: Database) -> None:
        processes.reap(db)
        processes.register(db, **self.details())

    def _quietly(self, db: Database, timeout: float | None, write: Any) -> None:
        """Run `write`; a refused statement or a timeout is a warning (once), not a stop."""
        try:
            with gevent.Timeout(timeout, TimeoutError("no answer from the database")):
                write(db)
            self._warned = None
        except (psycopg2.Error, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {first_line(exc)}"
            if problem != self._warned:
                log.warning("Could not record this process in taskworker_processes: %s",
                            problem)
            self._warned = problem
