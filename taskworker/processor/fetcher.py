"""What to claim next: how many tasks, from which queues, by which statement.

The exchange (exchange.py) asks before each claim it sends; the fetcher decides
and keeps what it learned from the last claims. It sends nothing itself.

It asks only for what can start soon: idle workers plus a prefetch
(Dispatch.free_slots). Each served queue with due tasks gets an equal share of a
claim (a busy queue does not starve the others), at most the room left under its
cap. Which queues and names have pending tasks is found by the first claim after
an idle spell and then every PAIRS_TTL while claims keep coming back full; in
between a busy process sends the cheaper claim_shares with the shares worked out
here, each queue's scan starting where its last such claim began (its bound: see
shares_claimed in queries.sql). The whole claim, which reads every queue from
its start, is what takes the tasks that fall before a bound; while it is dear (a
long transaction keeps the entries of claimed tasks in the index) it is sent
less often, so that it takes at most FULL_CLAIM_SHARE of the claiming lane's
time. A busy process with ALONG_WORKERS workers or more keeps a second claim in
flight (see `along`).
"""
from __future__ import annotations

import time
from typing import NamedTuple

from ..settings import Settings
from ..store import tasks as store
from .catalog import Catalog
from .dispatch import AUTO_LIMIT, Dispatch
from .intake import CLAIM_BYTES

ALONG_WORKERS = 20  # fewest for a second claim in flight (see along)
PAIRS_TTL = 0.5  # seconds a busy fetcher claims from the (queue, name) pairs it found
FULL_CLAIM_SHARE = 0.1  # most of the claiming lane's time the whole claim may take


class Plan(NamedTuple):
    """One claim to send."""

    limit: int  # most tasks
    served: store.Served  # queues and names
    pairs: store.Pairs | None  # the (queue, name) pairs kept; None: find them with this claim
    shares: dict[str, int] | None  # each queue's share: claim_shares (else the whole claim)
    inline_bytes: int  # payloads larger than this are loaded apart (intake.py)
    alone: bool = False  # a task that must run alone
    bounds: dict[str, store.Bound] = {}  # claim_shares: where each queue's scan starts


class Fetcher:
    def __init__(self, settings: Settings, dispatch: Dispatch, catalog: Catalog) -> None:
        self.fetch_limit = settings.fetch_limit
        self.dispatch = dispatch
        self.catalog = catalog
        self._pairs: store.Pairs = []  # (queue, name) with pending tasks, as last found
        self._pairs_at = 0.0  # when (monotonic); 0: find them with the next claim
        self._pairs_ttl = PAIRS_TTL  # until the next whole claim (longer while it is dear)
        self._bounds: dict[str, store.Bound] = {}  # where each queue's next busy claim starts
        self.busy = False  # claims come back full: a second claim may go along

    def wanted(self) -> int:
        """Tasks to claim now (0: the workers have enough)."""
        return self.dispatch.free_slots(self.fetch_limit)

    def plan(self, limit: int, alone: bool = False) -> Plan:
        """The claim of up to `limit` tasks (with `alone`: only a task that must
        run alone). Payloads come with the claim while each is at most
        CLAIM_BYTES / limit bytes, so its reply stays within CLAIM_BYTES."""
        served, pairs = self._served(), self._known_pairs()
        shares = None if alone else store.busy_shares(served, pairs, limit)
        bounds = {} if shares is None else \
            {q: self._bounds[q] for q in shares if q in self._bounds}
        return Plan(limit, served, pairs, shares, max(CLAIM_BYTES // limit, 1), alone, bounds)

    def along(self) -> Plan | None:
        """The second claim in flight, for the outcomes the writing lane sends
        while the first is on the wire; None when none is due: the process is not
        busy, the claim needs the whole `claim` statement, or a few workers are
        fed by one claim (two in flight may hand out their tasks in either
        order)."""
        if not self.busy:
            return None
        limit = self.wanted()
        workers = self.dispatch.worker_count
        if workers < ALONG_WORKERS or limit < min(self.fetch_limit or AUTO_LIMIT, workers):
            return None  # (less than a full claim: the next first claim will do)
        plan = self.plan(limit)
        return plan if plan.shares is not None else None

    def claimed(self, plan: Plan, claim: store.Claim, claimed_at: float) -> None:
        """Learn from a claim's rows: the pairs it found (after the whole claim,
        whose time sets when the next is due), the queues it drained, where the
        next busy claim of each queue starts."""
        if claim.pairs is not None:
            self._pairs, self._pairs_at = claim.pairs, claimed_at
            took = time.monotonic() - claimed_at
            self._pairs_ttl = max(PAIRS_TTL, took / FULL_CLAIM_SHARE)
            self._bounds = {}  # (it read every queue from its start)
        elif not plan.alone:
            self._drop_drained(claim.rows, plan.limit, plan.served.rooms)
            self._bounds.update(claim.bounds)

    def idle(self) -> None:
        """A claim came back with nothing more to take: after the idle spell, look
        for new queues and names, and claim one at a time again."""
        self._pairs_at = 0.0
        self._bounds = {}
        self.busy = False

    def _served(self) -> store.Served:
        """What this process claims now (capped queues: the room left in each;
        rate-limited names: as many as idle workers wait for)."""
        return self.catalog.served(self.dispatch.held_by_queue() if self.catalog.caps else {},
                                   self.dispatch.idle_count() if self.catalog.rates else 0)

    def _known_pairs(self) -> store.Pairs | None:
        """The (queue, name) pairs kept; None after PAIRS_TTL (look again)."""
        return self._pairs if time.monotonic() - self._pairs_at < self._pairs_ttl else None

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
