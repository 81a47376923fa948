"""Whether inserts must notify this process: its `asleep` mark in
taskworker_processes (migration 018).

Every commit that sends a NOTIFY takes a cluster-wide lock for its commit, so
the insert trigger notifies only while some process's row says it is asleep. A
busy process (its claims come back full) claims again at once and needs no
notification: it clears its mark. Before it sleeps, a process marks itself and
then looks at the table once more; only a claim after the mark may come back
empty before it sleeps, so no insert falls between the two:

    claim not full ─▶ mark (advisory lock tried) ─▶ claim again ─▶ sleep until NOTIFY
                         │ refused: an insert that looked for sleepers before
                         ▼ the mark is not committed yet
                      sleep MARK_RETRY_FIRST..MARK_RETRY_MOST, claim, mark again

The mark is refused, not waited for, so that no producer ever queues behind it
(see process_asleep in queries.sql). A process that does not listen (LISTEN=false)
never marks itself: it polls every FETCH_INTERVAL, as before.
"""
from __future__ import annotations

from ..store import processes
from ..store.database import Database

MARK_RETRY_FIRST = 0.002  # seconds before the first retry of a refused mark (then doubled)
MARK_RETRY_MOST = 0.1  # seconds between retries at most (a long transaction that enqueued)


class SleepMark:
    def __init__(self, holder: str, listens: bool) -> None:
        self.holder = holder
        self.listens = listens
        self.marked = False  # the row says asleep, as far as this process knows
        self._retry = MARK_RETRY_FIRST

    def busy(self, db: Database) -> None:
        """A claim came back full: the next follows at once, inserts need not notify."""
        if self.marked:
            processes.awake(db, self.holder)
            self.marked = False

    def before_sleep(self, db: Database) -> float | None:
        """A claim came back with nothing more: how long the process may sleep.
        None: as long as it likes (marked: an insert notifies it); 0: marked just
        now, so claim once more first; else the mark was refused (or the row is
        missing): sleep at most that long, claim, and try again."""
        if self.marked or not self.listens:
            return None
        mark = processes.asleep(db, self.holder)
        if mark.marked:
            self.marked = True
            self._retry = MARK_RETRY_FIRST
            return 0.0
        retry = self._retry
        self._retry = min(retry * 2, MARK_RETRY_MOST)
        return retry
