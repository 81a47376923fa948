"""The round trips between this process and the tasks table: each one sends the
outcomes waiting and brings back the next claim, in one statement.

    workers ──outcomes──▶ completer (buffer) ──▶ ┌──────────── exchange ────────────┐
                                                 │ claiming lane    writing lane    │
    fetcher (what to claim) ───────────────────▶ │ (connection      (connection     │
                                                 │  "fetcher")       "completer")   │
    dispatch ◀──tasks handed out (intake)─────── └──────────────────────────────────┘

Every statement that touches the tasks for this process's work goes out here,
through `_round_trip`: the outcomes waiting are written (fenced by their hold)
and the claim the fetcher planned is taken, in one statement when the process
is busy (claim_shares_completing), else one after the other. Its answer says of
every outcome whether it is in the table (written now, or by an earlier send of
the same statement whose reply was lost), so that is reported as it is, with no
second look at the rows; and its rows are handed to the workers (intake.py).

Two lanes send, each on a connection of its own, so that a busy process keeps
two statements in flight (the server runs one while the process handles the
other's answer):
- the claiming lane claims when workers are (about to be) idle, carrying the
  outcomes waiting; between claims it rescues tasks whose holder vanished, gives
  back what a lost reply left claimed, and runs the task that must run alone;
- the writing lane writes outcomes as they come (at once in an idle process,
  in batches in a busy one), carrying a second claim while the process is busy.
They never call each other: both ask the fetcher what to claim and the
completer what to write, and both go through `_round_trip`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2.errors

from ..logs import log
from ..settings import Settings
from ..store import completion
from ..store import tasks as store
from ..store.completion import Written
from ..store.connection import CONNECTION_ERRORS, ReconnectingConnection, SteppedBack, Stopped
from ..store.database import first_line
from ..store.tasks import ClaimedTask
from . import memory
from .catalog import Catalog
from .completer import Completer
from .dispatch import Dispatch
from .fetcher import Fetcher, Plan
from .intake import CLAIM_BYTES, Intake
from .outcomes import ERROR, GIVE_BACK, RETRY, SNOOZE, Outcome, fields
from .sleeping import SleepMark

RESCUE_EVERY = 1.0  # seconds between rescue checks while busy
DRAIN_POLL = 0.05  # seconds between checks while draining for a task that runs alone
BACKLOG_POLL = 0.01  # seconds between checks while the completer's backlog is full
RENEWAL_POLL = 0.1  # seconds between checks while leases are not being renewed
KEYED_RECHECK = 0.25  # seconds between claims of keyed tasks that find none, while busy
QUEUE_FULL_POLL = 0.1  # seconds between claims while the notification queue is too full


class Exchange:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch, catalog: Catalog,
                 completer: Completer, renewing: Callable[[], bool],
                 stopping: Callable[[], bool], giving_up: Callable[[], bool],
                 lanes: tuple[ReconnectingConnection, ReconnectingConnection] | None = None,
                 ) -> None:
        self.settings = settings
        self.holder = holder
        self.dispatch = dispatch
        self.catalog = catalog
        self.completer = completer
        self.fetcher = Fetcher(settings, dispatch, catalog)
        self.intake = Intake(settings, holder, dispatch, completer.put)
        self.renewing = renewing  # leases renewed, connections there: claim only then
        self.stopping = stopping  # shutdown: claim nothing more
        # Each lane's connection re-opens itself after an outage and sends the
        # statement again; the claiming lane gives up at shutdown, the writing
        # lane once shutdown gives up on the database (GIVE_BACK_GRACE). (`lanes`:
        # connections given instead, as tests give a scripted database.)
        self.claiming, self.writing = lanes or (
            ReconnectingConnection(settings, "fetcher", should_stop=stopping,
                                   on_reconnect=self._reconnected, prepare=True),
            ReconnectingConnection(settings, "completer", should_stop=giving_up,
                                   on_reconnect=self._reconnected, prepare=True))
        self._orphans_possible = False  # a claim's reply may have been lost
        self._giving_back = False  # orphans are being given back: no claim may start
        self._alone_waiting = False  # a task that must run alone may be due
        self._next_rescue = 0.0
        self._rescued = 0
        self._key_after: tuple[str, str] | None = None  # where the last walk of keys stopped
        self._keyed_next = 0.0  # (monotonic) no claim of keyed tasks before, without news
        self.sleep_mark = SleepMark(holder, settings.listen)  # may inserts skip the NOTIFY?

    def stats(self) -> dict[str, int]:
        return {"claimed": self.intake.claimed, "rescued": self._rescued,
                "refused": self.intake.refused}

    # --- the claiming lane (the "fetcher" service)

    def claim_loop(self) -> None:
        """Claim while workers are (about to be) idle; otherwise sleep until a
        NOTIFY, a worker going idle, the next retry or lease expiry falling due,
        or FETCH_INTERVAL, whichever comes first. Claims only while the heartbeat
        renews leases (a process holds no claim it cannot keep)."""
        while not self.stopping():
            try:
                self._claim_loop()
            except SteppedBack:  # (short of connection slots: see processor/shortage.py)
                self._orphans_possible = True  # a claim given up may have committed
                self.dispatch.sleep(RENEWAL_POLL)

    def _claim_loop(self) -> None:
        if self.catalog.limits:  # the slot rows of max_running, before any claim
            store.ensure_slots(self.claiming, self.catalog.limits)
        if self.catalog.rates:  # the token rows of rate limits, likewise
            store.ensure_tokens(self.claiming, {name: (rate.starts, rate.per)
                                                for name, rate in self.catalog.rates.items()})
        while not self.stopping():
            self.give_back_orphans()
            if time.monotonic() >= self._next_rescue:
                self.rescue()
            if self._alone_waiting:
                self._run_alone()
                continue
            if self.completer.backlogged():
                self.dispatch.sleep(BACKLOG_POLL)
                continue
            if not self.renewing():
                self.dispatch.sleep(RENEWAL_POLL)
                continue
            want = self.fetcher.wanted()
            if want <= 0:
                self.dispatch.sleep(self.settings.fetch_interval)
                continue
            keyed_more = False
            if self.catalog.per_key and self._keyed_due():
                keyed_more = self.claim_keyed()
                if (want := self.fetcher.wanted()) <= 0:
                    continue
            tasks, more = self.claim(self.fetcher.plan(want))
            if tasks:
                log.info("Fetched %d tasks", len(tasks))
            del tasks  # (it sleeps next: it keeps no payload alive meanwhile)
            if more or keyed_more:
                self.sleep_mark.busy(self.claiming)
            elif not self.stopping():
                self.fetcher.idle()
                wait = self.sleep_mark.before_sleep(self.claiming)
                if wait == 0.0:  # marked asleep: look once more before sleeping,
                    self._keyed_next = 0.0  # for keyed tasks too
                    continue
                idle = self._idle_wait()
                self.dispatch.sleep(idle if wait is None else min(idle, wait))

    def claim(self, plan: Plan) -> tuple[list[ClaimedTask], bool]:
        """Send the claim `plan` with the outcomes waiting (when it can carry
        them) and hand its tasks to the workers in the claim's order; return
        them, and whether more may be waiting (a queue got all it could).

        The claim counts as on the wire until its rows are handed out (the
        payloads loaded meanwhile may take a reconnect): rows the table says
        this process holds and the dispatch does not know yet are no orphans."""
        outcomes = self.completer.take() if plan.shares is not None else []
        if plan.shares is not None:
            self.fetcher.busy = True  # (till the next idle spell: see Fetcher.along)
        with self.dispatch.on_the_wire(plan.limit):
            claim = self._round_trip(self.claiming, plan, outcomes)
            claimed_at = self.claiming.sent_at  # (the send that succeeded, after an outage)
            self.fetcher.claimed(plan, claim, claimed_at)
            taken = self.intake.take_in(self.claiming, claim.rows, claimed_at)
        if large(outcomes):  # (as the writing lane after a large batch: see write_loop)
            del outcomes
            self.claiming.recycle()
            memory.release()
        return taken

    def claim_keyed(self) -> bool:
        """Claim tasks enqueued with a concurrency key for the idle workers (a
        keyed task held in the local queue would take its key's place while it
        waits); whether to claim keyed tasks again at once (the walk stopped
        short of the last key, or met new keys whose tasks the next claim takes).
        After a claim that found nothing, the next waits for news (keyed_news),
        or FETCH_INTERVAL (KEYED_RECHECK while busy): a saturated key is not
        asked about in a loop."""
        idle = self.dispatch.idle_count()
        if idle <= 0:
            return False
        served = self.catalog.served({}, idle)
        with self.dispatch.on_the_wire(idle):
            keyed = store.claim_keyed(
                self.claiming, holder=self.holder, limit=idle, lease=self.settings.lease_seconds,
                served=served, per_key=self.catalog.per_key, after=self._key_after,
                inline_bytes=max(CLAIM_BYTES // idle, 1))
            tasks, _ = self.intake.take_in(self.claiming, keyed.rows, self.claiming.sent_at)
        if tasks:
            log.info("Fetched %d tasks", len(tasks))
        self._key_after = keyed.after
        again = keyed.after is not None or keyed.made > 0
        # Nothing claimable: asleep, a notification brings news of inserts; busy
        # (inserts do not notify then: sleeping.py), look again within KEYED_RECHECK.
        pause = self.settings.fetch_interval if self.sleep_mark.marked else KEYED_RECHECK
        self._keyed_next = 0.0 if tasks or again else time.monotonic() + pause
        return again

    def _keyed_due(self) -> bool:
        """Is a claim of keyed tasks worth sending now (see claim_keyed)?"""
        return self.dispatch.keyed_news() or time.monotonic() >= self._keyed_next

    def rescue(self) -> None:
        """Take back tasks whose lease expired: their process stopped responding."""
        self._next_rescue = time.monotonic() + min(RESCUE_EVERY, self.settings.fetch_interval)
        rescued = store.rescue(self.claiming, max_rescues=self.settings.max_rescues,
                               holder=self.holder, held=self.dispatch.held_ids())
        if not self._alone_waiting:  # (even with MAX_RESCUES=0: flagged by an earlier run)
            self._alone_waiting = store.alone_waiting(self.claiming, self.catalog.served({}))
        found = sorted(rescued.back + rescued.parked + rescued.cancelled)
        if not found:
            return
        self._rescued += len(found)
        log.warning("Rescued %d tasks whose worker stopped responding: %s",
                    len(found), ", ".join(map(str, found)))
        if rescued.unstarted:
            log.info("Of those, %d had not started (not charged a lost worker): %s",
                     len(rescued.unstarted), ", ".join(map(str, rescued.unstarted)))
        for task_id in rescued.cancelled:
            log.warning("Task ID: %d processed with status: cancelled (cancel requested, "
                        "its worker was lost)", task_id, extra={"task_id": task_id})
        for task_id in rescued.parked:
            log.warning("Task ID: %d parked in error: its worker was lost more than "
                        "MAX_RESCUES=%d times", task_id, self.settings.max_rescues,
                        extra={"task_id": task_id})
        if rescued.back:
            store.wake_others(self.claiming)

    def _run_alone(self) -> None:
        """A task whose worker was lost MAX_RESCUES times (the rescue flags it
        run_alone) gets its last run alone: stop claiming, wait until every task
        held is run and written, claim that one task, and wait for it in turn.
        If it kills the process again, only that task is charged and parked,
        not the innocent tasks that would have run beside it."""
        if self.dispatch.held_count():  # claimed tasks not yet run and written
            self.dispatch.sleep(DRAIN_POLL)
            return
        tasks, _ = self.claim(self.fetcher.plan(1, alone=True))
        if not tasks:
            self._alone_waiting = False
            return
        task = tasks[0]
        log.warning("Task ID: %d lost its worker %d times: running it alone",
                    task.id, task.rescues, extra={"task_id": task.id})

    def _idle_wait(self) -> float:
        """Seconds to sleep when the table had nothing for us."""
        due = store.next_due(self.claiming, list(self.catalog.rates))
        wait = self.settings.fetch_interval
        if due.queue_full:  # the insert trigger does not notify: poll
            wait = min(wait, QUEUE_FULL_POLL)
        for seconds in (due.retry, due.lease, due.token):
            if seconds is not None:
                wait = min(wait, max(seconds, 0.0) + 0.01)
        return wait

    def _reconnected(self) -> None:
        """A lane's connection was opened again: a claim may have committed while
        its reply was lost with the old one, and those rows are ours in the
        table but unknown here."""
        self._orphans_possible = True
        self.dispatch.wake()

    def give_back_orphans(self) -> None:
        """After a reconnect, give back what the table says this process holds
        and the dispatch does not know: the rows of a claim whose reply was
        lost. Not while a claim is on the wire (its rows are not handed out
        yet: no orphans), and no claim starts meanwhile (see _along)."""
        if not self._orphans_possible or self.dispatch.claim_on_the_wire():
            return
        self._orphans_possible = False
        self._giving_back = True
        try:
            ids = store.give_back_orphans(self.claiming, holder=self.holder,
                                          known=self.dispatch.holds())
        finally:
            self._giving_back = False
        if ids:
            log.warning("Gave back %d tasks claimed before the connection was lost: %s",
                        len(ids), ", ".join(map(str, ids)))

    # --- the writing lane (the "completer" service)

    def write_loop(self) -> None:
        """Write outcomes as they come, until the completer is stopped and empty."""
        # Connect now, not at the first outcome: ready when it comes. A statement,
        # not just a connect: only a statement that succeeds clears a failure the
        # connect went through (else /healthz reports an idle completer down).
        store.ping(self.writing)
        while (batch := self.completer.gather()) is not None:
            if not self._along(batch):
                self.write(self.writing, batch)
            was_large = large(batch)
            del batch  # (before the release: it frees what the batch held)
            if was_large:
                self.writing.recycle()
                memory.release()

    def _along(self, batch: list[Outcome]) -> bool:
        """Write the batch with a second claim in flight, if one is due (a busy
        process: see Fetcher.along). False: nothing was sent."""
        if self.completer.frees_slots or self.stopping() or self._alone_waiting \
                or self._orphans_possible or self._giving_back or not self.renewing():
            return False
        plan = self.fetcher.along()
        if plan is None:
            return False
        with self.dispatch.on_the_wire(plan.limit):  # (till handed out: see claim)
            claim = self._round_trip(self.writing, plan, batch)
            self.fetcher.claimed(plan, claim, self.writing.sent_at)
            if self.stopping():  # (shutdown began while it was on the wire)
                for row in claim.rows:
                    self.completer.put(Outcome(row.task, 0, GIVE_BACK))
                return True
            tasks, _ = self.intake.take_in(self.writing, claim.rows, self.writing.sent_at)
        if tasks:
            log.info("Fetched %d tasks", len(tasks))
        return True

    # --- the round trip, for both lanes

    def _round_trip(self, db: ReconnectingConnection, plan: Plan,
                    outcomes: list[Outcome]) -> store.Claim:
        """Write `outcomes` and claim `plan` on `db`: in one statement when the
        claim is a busy process's (claim_shares), else the outcomes first. A
        statement refused whole (statement_timeout, a row the table refuses)
        leaves its outcomes to `write` (the writing lane's), which finds the one
        at fault; whatever an earlier send of it wrote, the answer of the next
        statement carrying the same outcomes says."""
        lease, holder = self.settings.lease_seconds, self.holder
        if outcomes and plan.shares is not None:
            try:
                claim = store.claim_shares_completing(
                    db, holder=holder, lease=lease, names=plan.served.names, shared=plan.shares,
                    inline_bytes=plan.inline_bytes, writes=[o.write() for o in outcomes],
                    bounds=plan.bounds)
            except Stopped:  # (shutdown, a step back: the writing lane writes them instead)
                self.completer.requeue(outcomes)
                raise
            except Exception as exc:
                log.info("Claim with %d outcomes refused (%s): writing them apart",
                         len(outcomes), first_line(exc))
                if db is self.writing:
                    self.write(db, outcomes)
                else:  # (the claiming lane goes on claiming)
                    self.completer.requeue(outcomes)
            except BaseException:  # killed at shutdown with the statement on the wire
                self.completer.requeue(outcomes)
                raise
            else:
                self._landed(db, outcomes, claim.written)
                return claim
        elif outcomes:
            self.write(db, outcomes)
        if plan.shares is not None:
            return store.claim_shares(db, holder=holder, lease=lease, names=plan.served.names,
                                      shared=plan.shares, inline_bytes=plan.inline_bytes,
                                      bounds=plan.bounds)
        return store.claim(db, holder=holder, limit=plan.limit, lease=lease, served=plan.served,
                           pairs=plan.pairs, inline_bytes=plan.inline_bytes, alone=plan.alone)

    def write(self, db: ReconnectingConnection, batch: list[Outcome]) -> None:
        """Write a batch of outcomes on `db`. Cancelled by statement_timeout:
        write each half on its own. Refused for another reason: write one by
        one, so one bad row cannot hold back the others."""
        try:
            written = self._send(db, batch)
        except psycopg2.errors.QueryCanceled as exc:
            if len(batch) == 1:
                batch, written = self._store_failure(db, batch[0], exc)
            else:
                log.warning("Writing %d outcomes took longer than STATEMENT_TIMEOUT; "
                            "writing them in two halves", len(batch))
                half = len(batch) // 2
                self.write(db, batch[:half])
                self.write(db, batch[half:])
                return
        except (*CONNECTION_ERRORS, Stopped):  # not sent, or its answer never came:
            raise  # the outcomes stay unwritten (their leases return the tasks)
        except Exception as exc:  # PostgreSQL refused the statement
            if len(batch) == 1:
                batch, written = self._store_failure(db, batch[0], exc)
            else:
                for outcome in batch:
                    self.write(db, [outcome])
                return
        self.completer.report(batch, written)

    def _send(self, db: ReconnectingConnection, batch: list[Outcome]) -> Written:
        """One `complete` statement; the holds whose outcome is in the table."""
        written = completion.complete(db, holder=self.holder, writes=[o.write() for o in batch],
                                      frees_slots=self.completer.frees_slots)
        self._landed(db, batch, written, report=False)
        return written

    def _landed(self, db: ReconnectingConnection, batch: list[Outcome], written: Written,
                report: bool = True) -> None:
        """Outcomes are in the table (`written`): wake every process's fetcher
        when one makes a task claimable (or frees a concurrency slot), and this
        one's when one was scheduled for later (it may have worked out its sleep
        while the row was still in progress)."""
        landed = [o for o in batch if o.task.hold in written]
        if report:
            self.completer.report(batch, written)
        if any(o.wakes_others for o in landed):
            store.wake_others(db)
        if any(o.kind in (RETRY, SNOOZE) and o.delay for o in landed):
            self.dispatch.wake()

    def _store_failure(self, db: ReconnectingConnection, outcome: Outcome, exc: Exception,
                       ) -> tuple[list[Outcome], Written]:
        """The outcome itself could not be stored (say, a result PostgreSQL
        refuses): store that as the task's error instead. Returns the outcome to
        report (the error, if it was stored) and the holds written."""
        message = f"could not store result: {type(exc).__name__}: {first_line(exc)}"
        failed = Outcome(outcome.task, outcome.worker, ERROR, error=message)
        try:
            written = self._send(db, [failed])
        except psycopg2.errors.QueryCanceled as exc:  # (an OperationalError, but no loss)
            log.error("Task ID: %d outcome could not be written: %s; it will be rescued",
                      outcome.task.id, first_line(exc))
            return [outcome], {}
        except (*CONNECTION_ERRORS, Stopped):
            raise
        except Exception as exc:
            log.error("Task ID: %d outcome could not be written: %s; it will be rescued",
                      outcome.task.id, first_line(exc))
            return [outcome], {}
        if written:  # a warning, as the worker's `failed:` line
            log.warning("%sTask ID: %d failed: %s",
                        f"[Worker {outcome.worker}] " if outcome.worker else "",
                        outcome.task.id, message, extra=fields(outcome))
        return [failed], written


def large(outcomes: list[Outcome]) -> bool:
    """Did these outcomes carry (a result) or free (a payload) memory enough to
    give back once they are gone? (See memory.py.)"""
    return sum(o.size + len(o.task.payload or "") for o in outcomes) >= memory.LARGE
