"""Claims tasks for the workers, and rescues tasks whose worker vanished.

The fetcher asks only for what can start soon: idle workers plus a prefetch
(Dispatch.free_slots). It claims again at once while claims come back full, and
otherwise sleeps until a NOTIFY, a worker going idle, the next retry or lease
expiry falling due, or FETCH_INTERVAL, whichever comes first. It claims only
while the heartbeat renews leases (a process holds no claim it cannot keep).

A busy process's claims also write the outcomes waiting (claim_shares_completing:
one round trip per batch), two in flight: the fetcher's and the completer's.

A task whose worker was lost MAX_RESCUES times (the rescue flags it run_alone)
gets its last run alone: the fetcher stops claiming, waits until every task it
holds is run and written, claims that one task, and waits for it in turn. If it
kills the process again, only that task is charged and parked, not the innocent
tasks that would have run beside it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection, Stopped
from ..store.database import first_line
from ..store.tasks import ClaimedTask
from .catalog import Catalog
from .completer import Completer
from .dispatch import AUTO_LIMIT, Dispatch
from .intake import CLAIM_BYTES, Intake
from .landed import confirm
from .outcomes import GIVE_BACK, Outcome

RESCUE_EVERY = 1.0  # seconds between rescue checks while busy
DRAIN_POLL = 0.05  # seconds between checks while draining for a task that runs alone
BACKLOG_POLL = 0.01  # seconds between checks while the completer's backlog is full
RENEWAL_POLL = 0.1  # seconds between checks while leases are not being renewed
ALONG_WORKERS = 20  # fewest for a second claim in flight (see claim_along)
PAIRS_TTL = 0.5  # seconds a busy fetcher claims from the (queue, name) pairs it found


class Fetcher:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch, catalog: Catalog,
                 completer: Completer, renewing: Callable[[], bool],
                 should_stop: Callable[[], bool]) -> None:
        self.settings = settings
        self.catalog = catalog
        self.completer = completer
        self.outcome = completer.put  # hands an outcome to the completer
        self.holder = holder
        self.dispatch = dispatch
        self.backlogged = completer.backlogged  # too many outcomes wait to be written
        self.intake = Intake(settings, holder, dispatch, completer.put)
        self.renewing = renewing  # the heartbeat renews leases
        self.should_stop = should_stop
        self.db = ReconnectingConnection(settings, "fetcher", should_stop=should_stop,
                                         on_reconnect=self.reconnected, prepare=True)
        self._orphans_possible = False
        self._next_rescue = 0.0
        self._alone_waiting = False  # a task that must run alone may be due
        self._pairs: store.Pairs = []  # (queue, name) with pending tasks, as last found
        self._pairs_at = 0.0  # when (monotonic); 0: find them with the next claim
        self._busy = False  # claims come back full: the completer claims along too
        self._giving_back = False  # orphans are being given back: no claim may start
        self._rescued = 0

    def stats(self) -> dict[str, int]:
        return {"claimed": self.intake.claimed, "rescued": self._rescued,
                "refused": self.intake.refused}

    def run(self) -> None:
        if self.catalog.limits:  # the slot rows of max_running, before any claim
            store.ensure_slots(self.db, self.catalog.limits)
        while not self.should_stop():
            self.give_back_orphans()
            if time.monotonic() >= self._next_rescue:
                self.rescue()
            if self._alone_waiting:
                self._run_alone()
                continue
            if self.backlogged():
                self.dispatch.sleep(BACKLOG_POLL)
                continue
            if not self.renewing():
                self.dispatch.sleep(RENEWAL_POLL)
                continue
            want = self.dispatch.free_slots(self.settings.fetch_limit)
            if want <= 0:
                self.dispatch.sleep(self.settings.fetch_interval)
                continue
            tasks, more = self.claim(want)
            if tasks:
                log.info("Fetched %d tasks", len(tasks))
            if not more and not self.should_stop():
                self._pairs_at = 0.0  # after an idle spell, look for new queues and names
                self._busy = False
                self.dispatch.sleep(self._idle_wait())

    def claim(self, limit: int, alone: bool = False) -> tuple[list[ClaimedTask], bool]:
        """Claim up to `limit` tasks (with `alone`: only tasks that must run alone)
        and hand them to the workers in the claim's order; return them, and whether
        more may be waiting (a queue got all the claim could give it).

        Each served queue with due tasks gets an equal share of `limit` (so a busy
        queue does not starve the others), at most the room left under its cap.
        Which queues and names have pending tasks is found by the first claim
        after an idle spell and then every PAIRS_TTL while claims keep coming
        back full (a queue or name new since is claimed from at the next look).

        Payloads come with the claim while each is at most CLAIM_BYTES / limit
        bytes, so the claim's reply stays within CLAIM_BYTES; see intake.py
        for the others.

        The claim counts as on the wire until its rows are handed out (the
        payloads loaded meanwhile may take a reconnect): rows the table says
        this process holds and the dispatch does not know yet are no orphans."""
        served, pairs = self._served(), self._known_pairs()
        inline_bytes = max(CLAIM_BYTES // limit, 1)
        shared = None if alone else store.busy_shares(served, pairs, limit)
        with self.dispatch.on_the_wire(limit):
            if shared is not None:  # (a busy process: see claim_shares)
                result = self._claim_shares(shared, served.names, inline_bytes)
            else:
                result = store.claim(self.db, holder=self.holder, limit=limit,
                                     lease=self.settings.lease_seconds, served=served,
                                     pairs=pairs, inline_bytes=inline_bytes, alone=alone)
            claimed_at = self.db.sent_at  # (the send that succeeded, after an outage)
            if result.pairs is not None:
                self._pairs, self._pairs_at = result.pairs, claimed_at
            elif not alone:
                self._drop_drained(result.rows, limit, served.rooms)
            return self.intake.take_in(self.db, result.rows, claimed_at)

    def claim_along(self, db: ReconnectingConnection, outcomes: list[Outcome]) -> bool:
        """The completer's lane: while this fetcher's claim is on the wire, write
        `outcomes` with a claim of what the workers want next, on the
        completer's connection (`db`): a busy process keeps two claims in
        flight, each with the last outcomes. False, having sent nothing, when no
        such claim is due (the process is not busy, the claim needs the whole
        `claim` statement, or a few workers are fed by one claim: two in flight
        may hand out their tasks in either order); the caller then writes the
        outcomes itself (also when the statement was refused)."""
        if not self._busy or self.should_stop() or self._alone_waiting \
                or self._orphans_possible or self._giving_back or not self.renewing():
            return False
        limit = self.dispatch.free_slots(self.settings.fetch_limit)
        workers = self.dispatch.worker_count
        if workers < ALONG_WORKERS or limit < min(self.settings.fetch_limit or AUTO_LIMIT,
                                                  workers):
            return False  # (less than a full claim: the fetcher's next one will do)
        served = self._served()
        shared = store.busy_shares(served, self._known_pairs(), limit)
        if shared is None:
            return False
        with self.dispatch.on_the_wire(limit):  # (till handed out: see claim)
            result = self._completing(db, shared, served.names, max(CLAIM_BYTES // limit, 1),
                                      outcomes)
            if result is None:
                return False
            self._drop_drained(result.rows, limit, served.rooms)
            if self.should_stop():  # (shutdown began while it was on the wire)
                for row in result.rows:
                    self.outcome(Outcome(row.task, 0, GIVE_BACK))
                return True
            tasks, _ = self.intake.take_in(db, result.rows, db.sent_at)
        if tasks:
            log.info("Fetched %d tasks", len(tasks))
        return True

    def _claim_shares(self, shared: dict[str, int], names: list[str],
                      inline_bytes: int) -> store.Claim:
        """claim_shares, writing the outcomes waiting in the same statement; those it
        could not write go back to the completer, which writes them apart."""
        outcomes = self.completer.take()
        self._busy = True  # (till the next idle spell: see claim_along)
        if outcomes:
            try:
                result = self._completing(self.db, shared, names, inline_bytes, outcomes)
            except BaseException:  # Stopped, or killed at shutdown: it may have committed
                self.completer.maybe_written(outcomes)
                self.completer.give_back(outcomes)
                raise
            if result is not None:
                return result
            self.completer.give_back(outcomes)
        return store.claim_shares(self.db, holder=self.holder, lease=self.settings.lease_seconds,
                                  names=names, shared=shared, inline_bytes=inline_bytes)

    def _completing(self, db: ReconnectingConnection, shared: dict[str, int], names: list[str],
                    inline_bytes: int, outcomes: list[Outcome]) -> store.Claim | None:
        """claim_shares_completing on `db` (either lane's connection), its outcomes
        then reported. None when refused whole (statement_timeout, a row refused):
        nothing claimed, the outcomes left to the completer (marked maybe written
        if the connection was lost first, or the reply had come)."""
        reconnects = db.reconnects
        result = None
        try:
            result = store.claim_shares_completing(
                db, holder=self.holder, lease=self.settings.lease_seconds, names=names,
                shared=shared, inline_bytes=inline_bytes, writes=[o.write() for o in outcomes])
            written = confirm(db, outcomes, result.written, lost=db.reconnects != reconnects)
        except Stopped:
            raise
        except Exception as exc:
            if db.reconnects != reconnects or result is not None:
                self.completer.maybe_written(outcomes)
            log.info("Claim with %d outcomes refused (%s): the completer writes them",
                     len(outcomes), first_line(exc))
            return None
        self.completer.landed(outcomes, written)
        return result

    def _served(self) -> store.Served:
        """What this process claims now (capped queues: the room left in each)."""
        return self.catalog.served(self.dispatch.held_by_queue() if self.catalog.caps else {})

    def _known_pairs(self) -> store.Pairs | None:
        """The (queue, name) pairs kept; None after PAIRS_TTL (look again)."""
        return self._pairs if time.monotonic() - self._pairs_at < PAIRS_TTL else None

    def _drop_drained(self, rows: list[store.Claimed], limit: int,
                      rooms: dict[str, int]) -> None:
        """Forget the kept queues that had nothing due for this claim (each was
        offered at least one task), so that the next claims share the workers
        between the queues that have work; the next look (within PAIRS_TTL)
        finds them again if they have tasks by then. A capped queue with no room
        left was offered nothing: it is kept."""
        queues = {q for q, _ in self._pairs}
        if limit < len(queues):  # (some queues were offered nothing this time)
            return
        got = {row.task.queue for row in rows}
        drained = {q for q in queues - got if rooms.get(q, 1) > 0}
        if drained:
            self._pairs = [(q, n) for q, n in self._pairs if q not in drained]

    def rescue(self) -> None:
        """Take back tasks whose lease expired: their process stopped responding."""
        self._next_rescue = time.monotonic() + min(RESCUE_EVERY, self.settings.fetch_interval)
        rescued = store.rescue(self.db, max_rescues=self.settings.max_rescues,
                               holder=self.holder, held=self.dispatch.held_ids())
        if not self._alone_waiting:  # (even with MAX_RESCUES=0: flagged by an earlier run)
            self._alone_waiting = store.alone_waiting(self.db, self.catalog.served({}))
        found = sorted(rescued.back + rescued.parked + rescued.cancelled)
        if not found:
            return
        self._rescued += len(found)
        log.warning("Rescued %d tasks whose worker stopped responding: %s",
                    len(found), ", ".join(map(str, found)))
        for task_id in rescued.cancelled:
            log.warning("Task ID: %d processed with status: cancelled (cancel requested, "
                        "its worker was lost)", task_id, extra={"task_id": task_id})
        for task_id in rescued.parked:
            log.warning("Task ID: %d parked in error: its worker was lost more than "
                        "MAX_RESCUES=%d times", task_id, self.settings.max_rescues,
                        extra={"task_id": task_id})
        if rescued.back:
            store.wake_others(self.db)

    def _run_alone(self) -> None:
        """Drain, then claim one task that must run alone and let it finish."""
        if self.dispatch.held_count():  # claimed tasks not yet run and written
            self.dispatch.sleep(DRAIN_POLL)
            return
        tasks, _ = self.claim(1, alone=True)
        if not tasks:
            self._alone_waiting = False
            return
        task = tasks[0]
        log.warning("Task ID: %d lost its worker %d times: running it alone",
                    task.id, task.rescues, extra={"task_id": task.id})

    def _idle_wait(self) -> float:
        """Seconds to sleep when the table had nothing for us."""
        due = store.next_due(self.db)
        wait = self.settings.fetch_interval
        for seconds in (due.retry, due.lease):
            if seconds is not None:
                wait = min(wait, max(seconds, 0.0) + 0.01)
        return wait

    def reconnected(self) -> None:
        """A claiming connection (this one, or the completer's) was opened again:
        a claim may have committed while its reply was lost with the old one,
        and those rows are ours in the table but unknown here."""
        self._orphans_possible = True
        self.dispatch.wake()

    def give_back_orphans(self) -> None:
        """After a reconnect, give back what the table says this process holds
        and the dispatch does not know: the rows of a claim whose reply was
        lost. Not while a claim is on the wire (its rows are not handed out
        yet: no orphans), and no claim starts meanwhile (see claim_along)."""
        if not self._orphans_possible or self.dispatch.claim_on_the_wire():
            return
        self._orphans_possible = False
        self._giving_back = True
        try:
            ids = store.give_back_orphans(self.db, holder=self.holder,
                                          known=self.dispatch.holds())
        finally:
            self._giving_back = False
        if ids:
            log.warning("Gave back %d tasks claimed before the connection was lost: %s",
                        len(ids), ", ".join(map(str, ids)))
