"""One typed function per statement on the tasks table: serve's side.

Each function takes a `Database` (a ReconnectingConnection or a `Direct` caller's
connection), sends one statement from queries.sql and returns Python values, so
no caller sees SQL text or unpacks a row by position. The admin commands' and
the enqueue API's statements are in `store.admin`, and the outcomes' in
`store.completion`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from . import arrays, sql
from .completion import OUTCOME_TYPES, Hold, OutcomeWrite, Written, outcome_arrays
from .database import Database
from .prepared import Prepared
from .sharing import shares

if TYPE_CHECKING:  # (this module imports no gevent: tests claim through it unpatched)
    from .connection import ReconnectingConnection

FINISHED = ("done", "error", "cancelled")  # the statuses a task never leaves by itself




KEYED_FORMAT = 3  # a call enqueued with a concurrency key (migration 017)


class ClaimedTask(NamedTuple):
    """One hold of a task: the row's id and payload, the attempt number users
    see, and the fencing token the claim gave it (every later write of this hold
    names (id, fence); no other hold of the task, ours included, has that fence)."""

    id: int
    payload: str | None
    attempt: int  # attempts after this claim
    rescues: int  # times an earlier worker was lost running it
    name: str | None = None  # the registered task it runs (None: the default handler)
    queue: str = "default"
    cancel_requested: bool = False  # `taskworker cancel` asked before the claim
    fence: int = 0  # the fencing token of this hold (tasks.fence, raised by each claim)
    unstarted_rescues: int = 0  # times it was lost before it started (see migration 011)
    format: int = 1  # 1: `payload` is the text payload; 2: it is the JSON call (migration 012)
    trace: str | None = None  # the enqueue's trace context, JSON (migration 014); None: untraced

    @property
    def keyed(self) -> bool:
        """A call enqueued with a concurrency key (format 3, migration 017)."""
        return self.format == KEYED_FORMAT

    @property
    def losses(self) -> int:
        """Workers lost with this task, started or not, before this hold."""
        return self.rescues + self.unstarted_rescues

    @property
    def start_durably(self) -> bool:
        """Once lost unstarted, its start is written before its handler runs: a
        handler that kills its process at once is then charged (migration 011)."""
        return self.unstarted_rescues > 0

    @property
    def hold(self) -> Hold:
        """(id, fence): this hold, as the statements that write it name it."""
        return self.id, self.fence



class Served(NamedTuple):
    """What a process claims: queues (None: every queue), the task names it knows
    ('' for tasks without a name, when it has a default handler), how many more
    tasks of each capped queue it may start, the names with max_running, and
    those with a rate limit (each with its span: the seconds a token it takes
    stays spent) and how many of them may be claimed now (the idle workers)."""

    queues: list[str] | None
    names: list[str]
    rooms: dict[str, int]  # capped queue -> places left in this process
    limited: list[str]
    rated: dict[str, float] = {}  # name -> span (seconds)
    rated_room: int = 0


class Claimed(NamedTuple):
    """One row of a claim: the task (its payload None when not loaded) and the
    payload's size in bytes."""

    task: ClaimedTask
    size: int
    loaded: bool  # the payload came with the claim
    share: int  # most tasks its queue could get from this claim


class Rescued(NamedTuple):
    back: list[int]  # put back to pending
    parked: list[int]  # parked in error: their worker was lost more than MAX_RESCUES times
    cancelled: list[int] = []  # a cancel was requested: ended cancelled
    unstarted: list[int] = []  # of all these, the ones lost before they started: not charged


class NextDue(NamedTuple):
    """Seconds until something falls due (None: nothing will)."""

    retry: float | None  # the next pending task scheduled for later
    lease: float | None  # the next lease to expire
    token: float | None = None  # the next rate-limit token to be free
    queue_full: bool = False  # the notification queue is too full to notify: poll


class Cutoff(NamedTuple):
    now: datetime
    before: datetime | None  # now minus the age asked for


EVERYTHING = Served(None, [""], {}, [])  # every queue, tasks without a name only

_CLAIM_TYPES = {
    "limit": "int", "holder": "text", "lease": "float8", "inline_bytes": "bigint",
    "queues": "text[]", "names": "text[]", "limited": "text[]", "capped": "text[]",
    "rooms": "int[]", "discover": "bool", "pair_queues": "text[]", "pair_names": "text[]",
    "rated": "text[]", "spans": "float8[]", "rated_room": "int"}
# Prepared once per direct connection (see prepared.py), behind the planner settings.
CLAIM = Prepared("taskworker_claim_v12", sql.claim, _CLAIM_TYPES, sql.ORDERED)
CLAIM_KEYED = Prepared("taskworker_claim_keyed_v1", sql.claim_keyed, {
    "limit": "int", "holder": "text", "lease": "float8", "inline_bytes": "bigint",
    "queues": "text[]", "names": "text[]", "per_key": "int[]", "after_task": "text",
    "after_key": "text", "scan": "int", "rated": "text[]", "spans": "float8[]",
    "rated_room": "int"}, sql.ORDERED)
_SHARES_TYPES = {**_CLAIM_TYPES, "shares": "int[]", "from_priorities": "int[]",
                 "from_run_ats": "timestamptz[]", "from_ids": "bigint[]"}
CLAIM_SHARES = Prepared("taskworker_claim_shares_v12", sql.claim_shares, _SHARES_TYPES,
                        sql.ORDERED)
_COMPLETING_TYPES = {**_SHARES_TYPES, **OUTCOME_TYPES}
# Planned once (a generic plan), like the claims, whatever the number of
# outcomes: behind the planner settings each outcome is one primary-key probe,
# which is what a plan for the values would choose too, and planning was a
# quarter of the server's CPU for a statement of 100 outcomes and 100 claims
# (benchmarks/claimcost.py, "custom plan").
CLAIM_SHARES_COMPLETING = Prepared(
    "taskworker_claim_shares_completing_v9", sql.claim_shares_completing, _COMPLETING_TYPES,
    sql.ORDERED)

# The statements that find holds by id, behind the same settings: with
# sequential scans priced out, each hold is one primary-key probe (see
# completion.COMPLETE).
HEARTBEAT = sql.ORDERED + sql.heartbeat
PAYLOADS = sql.ORDERED + sql.payloads

Pairs = list[tuple[str, str]]  # (queue, task name or '') with pending tasks
# Where a busy claim of a queue starts its scan (see shares_claimed in
# queries.sql): the priority, due time (as text) and id of the first row the
# last such claim took from it.
Bound = tuple[int, str, int]


class Claim(NamedTuple):
    rows: list[Claimed]  # in the order to run them: priority, due time, id
    pairs: Pairs | None  # the (queue, name) pairs with pending tasks, when discovered
    written: Written = {}  # claim_shares_completing: the holds whose outcome is in the table
    bounds: dict[str, Bound] = {}  # claim_shares: where the next claim of each queue starts


def busy_shares(served: Served, pairs: Pairs | None, limit: int) -> dict[str, int] | None:
    """The claim of `limit` tasks as each queue's share, when it can be sent as
    claim_shares (the pairs are known, and no name has a concurrency limit);
    else None: the whole `claim` statement must be sent."""
    return None if pairs is None or served.limited or served.rated \
        else shares(served, pairs, limit)


def claim(db: Database, *, holder: str, limit: int, lease: float, served: Served = EVERYTHING,
          pairs: Pairs | None = None, inline_bytes: int = 2**62, alone: bool = False) -> Claim:
    """Claim up to `limit` due tasks for `holder` that `served` covers (with
    `alone`: only a task that must run alone); payloads over `inline_bytes` are
    left unloaded (see `payloads`). `pairs`: the (queue, name) pairs found by an
    earlier claim; None: find them now (returned in the Claim)."""
    shared = None if alone else busy_shares(served, pairs, limit)
    if shared is not None:  # (the common case of a busy process: see claim_shares)
        return claim_shares(db, holder=holder, lease=lease, names=served.names,
                            shared=shared, inline_bytes=inline_bytes)
    statement = sql.claim_alone if alone else CLAIM
    found = db.query(statement, {
        "limit": limit, "holder": holder, "lease": lease, "inline_bytes": inline_bytes,
        "queues": served.queues, "names": served.names, "limited": served.limited,
        "rated": list(served.rated), "spans": list(served.rated.values()),
        "rated_room": served.rated_room,
        "capped": list(served.rooms), "rooms": list(served.rooms.values()),
        "discover": pairs is None, "pair_queues": [q for q, _ in pairs or ()],
        "pair_names": [n for _, n in pairs or ()]})
    return Claim(_claimed(found, inline_bytes), None if pairs is not None or alone else
                 [(row[6], row[5]) for row in found if row[0] is None])


KEYS_SCANNED = 1000  # most keys one claim_keyed walks


class KeyedClaim(NamedTuple):
    rows: list[Claimed]
    after: tuple[str, str] | None  # the last key walked, when the walk stopped short
    made: int = 0  # keys met for the first time: their tasks are for the next claim


def claim_keyed(db: Database, *, holder: str, limit: int, lease: float, served: Served,
                per_key: dict[str, int | None], after: tuple[str, str] | None,
                inline_bytes: int = 2**62, scan: int = KEYS_SCANNED) -> KeyedClaim:
    """Claim up to `limit` due tasks enqueued with a concurrency key, at most
    `per_key[name]` running per (name, key) across processes (None: no limit),
    walking up to `scan` keys from after `after` (None: from the first)."""
    found = db.query(CLAIM_KEYED, {
        "limit": limit, "holder": holder, "lease": lease, "inline_bytes": inline_bytes,
        "queues": served.queues, "names": list(per_key), "per_key": list(per_key.values()),
        "after_task": after[0] if after else "", "after_key": after[1] if after else "",
        "scan": scan, "rated": list(served.rated), "spans": list(served.rated.values()),
        "rated_room": served.rated_room})
    last = next((row for row in found if row[0] is None), None)
    return KeyedClaim(_claimed(found, inline_bytes),
                      None if last is None or last[5] is None else (last[5], last[6]),
                      0 if last is None else last[7])


def claim_shares(db: Database, *, holder: str, lease: float, names: list[str],
                 shared: dict[str, int], inline_bytes: int = 2**62,
                 bounds: Mapping[str, Bound] | None = None) -> Claim:
    """Claim `shared[queue]` due tasks of each queue (tasks named in `names`),
    as `claim` does for a busy process (see busy_shares); a queue in `bounds`
    from its bound on (see shares_claimed)."""
    found = db.query(CLAIM_SHARES, _shares_params(holder, lease, names, shared, inline_bytes,
                                                  bounds or {}))
    return Claim(_claimed(found, inline_bytes), None, {}, _bounds(found))


def claim_shares_completing(db: ReconnectingConnection, *, holder: str, lease: float,
                            names: list[str], shared: dict[str, int], inline_bytes: int,
                            writes: Sequence[OutcomeWrite],
                            bounds: Mapping[str, Bound] | None = None) -> Claim:
    """claim_shares, and in the same statement write `writes` as `complete`
    does (fenced); the Claim's `written` holds the holds whose outcome is in
    the table (written now, or by an earlier send of this statement).
    A statement_timeout is raised (QueryCanceled), not sent again: the caller
    writes the outcomes apart."""
    found = db.query(CLAIM_SHARES_COMPLETING, {
        **_shares_params(holder, lease, names, shared, inline_bytes, bounds or {}),
        **outcome_arrays(writes)}, resend_on_timeout=False)
    claimed = [row for row in found if row[15] is None]
    return Claim(_claimed(claimed, inline_bytes), None,
                 {(row[0], row[9]): row[15] for row in found
                  if row[15] is not None and row[15] != "fenced"}, _bounds(claimed))


def _shares_params(holder: str, lease: float, names: list[str], shared: dict[str, int],
                   inline_bytes: int, bounds: Mapping[str, Bound]) -> dict[str, object]:
    start = [bounds.get(queue) for queue in shared]
    return {"limit": sum(shared.values()), "holder": holder, "lease": lease,
            "inline_bytes": inline_bytes, "names": names, "queues": list(shared),
            "shares": list(shared.values()),
            "from_priorities": arrays.numbers(None if b is None else b[0] for b in start),
            "from_run_ats": arrays.texts(None if b is None else b[1] for b in start),
            "from_ids": arrays.numbers(None if b is None else b[2] for b in start)}


def _bounds(rows: list[tuple]) -> dict[str, Bound]:
    """Each queue's first row of a busy claim (its claimed rows, in the claim's
    order): where the next claim of the queue starts."""
    bounds: dict[str, Bound] = {}
    for row in rows:
        bounds.setdefault(row[6], (row[13], row[14], row[0]))
    return bounds


def _claimed(found: list[tuple], inline_bytes: int) -> list[Claimed]:
    return [Claimed(ClaimedTask(row[0], row[1], row[2], row[3], row[5], row[6], row[8], row[9],
                                row[10], row[11], row[12]),
                    row[4], row[4] <= inline_bytes, row[7])
            for row in found if row[0] is not None]  # (in the order to run them)


def ensure_slots(db: Database, limits: dict[str, int]) -> None:
    """Make the concurrency slots of each limited task name: `limits[name]` rows
    (free slots above a lowered limit are removed)."""
    db.query(sql.ensure_slots, {"tasks": list(limits), "counts": list(limits.values())})


def ensure_tokens(db: Database, rates: dict[str, tuple[int, float]]) -> None:
    """Make the rate-limit tokens of each rated task name: `rates[name]` is
    (starts, window in seconds)."""
    db.query(sql.ensure_tokens, {"tasks": list(rates), "counts": [c for c, _ in rates.values()],
                                 "pers": [p for _, p in rates.values()]})


def payloads(db: Database, *, holder: str, holds: Sequence[Hold]) -> dict[int, str | None]:
    """The payloads of the `holds` that `holder` still has, by id."""
    return dict(db.query(PAYLOADS, {"holder": holder, **hold_arrays(holds)}))


def hold_arrays(holds: Sequence[Hold]) -> dict[str, str]:
    """`ids` and `fences`: the parameters naming some holds (array literals)."""
    return {"ids": arrays.numbers(i for i, _ in holds),
            "fences": arrays.numbers(f for _, f in holds)}


def rescue(db: Database, *, max_rescues: int, holder: str, held: Sequence[int]) -> Rescued:
    """Take back tasks whose lease expired: their process stopped responding (never
    one that `holder` still holds: `held`)."""
    rows = db.query(sql.rescue, {"max_rescues": max_rescues, "holder": holder,
                                 "held": arrays.numbers(held)})
    return Rescued(back=sorted(i for i, status, _ in rows if status == "pending"),
                   parked=sorted(i for i, status, _ in rows if status == "error"),
                   cancelled=sorted(i for i, status, _ in rows if status == "cancelled"),
                   unstarted=sorted(i for i, _, charged in rows if not charged))


def alone_waiting(db: Database, served: Served = EVERYTHING) -> bool:
    """Is a task that must run alone due, of those `served` covers?"""
    return bool(db.query(sql.alone_waiting, {
        "queues": served.queues, "names": served.names, "limited": served.limited,
        "rated": list(served.rated)})[0][0])


def next_due(db: Database, rated: Sequence[str] = ()) -> NextDue:
    """What falls due next (with `rated`: also the next token of those names)."""
    retry, lease, token, queue_full = db.query(sql.next_due, {"rated": list(rated)})[0]
    retry, lease, token = (None if s is None else float(s) for s in (retry, lease, token))
    return NextDue(retry, lease, token, bool(queue_full))


class Held(NamedTuple):
    ids: set[int]  # still held by this holder
    cancel: list[int]  # of those, the ones `taskworker cancel` asked to stop


def heartbeat(db: Database, *, holder: str, holds: Sequence[Hold], lease: float,
              started: Sequence[float | None] = ()) -> Held:
    """Extend the leases of `holds` (and their slots); say which `holder` still has.
    `started`, one per hold: seconds since its handler started (None: not
    started), written as started_at where it is not yet."""
    started = list(started) or [None] * len(holds)
    rows = db.query(HEARTBEAT, {"holder": holder, "lease": lease, **hold_arrays(holds),
                                    "agos": arrays.numbers(started)})
    return Held({row[0] for row in rows}, sorted(row[0] for row in rows if row[1]))


def outcome_landed(db: Database, write: OutcomeWrite) -> bool:
    """Is `write` in its row (its commit landed, though the reply was lost)?"""
    return bool(db.query(sql.outcome_landed, {"id": write.id, "fence": write.fence,
                                              "status": write.status,
                                              "losses": write.losses})[0][0])


def give_back_orphans(db: Database, *, holder: str, known: Sequence[Hold]) -> list[int]:
    """Give back the holds `holder` has in the table other than `known`; their ids."""
    rows = db.query(sql.give_back_orphans, {"holder": holder, **hold_arrays(known)})
    return sorted(row[0] for row in rows)


def wake_others(db: Database) -> None:
    """Wake the idle fetchers of every process: tasks became claimable."""
    db.query(sql.wake_others)


def listen(db: Database) -> None:
    """Subscribe this connection to the wake-up notifications."""
    db.query(sql.listen)


def notify_self(db: Database, payload: str) -> None:
    """A notification on the wake-up channel with `payload`: the listener's check
    that its LISTEN works."""
    db.query(sql.notify, {"payload": payload})


def backend_pid(db: Database) -> int:
    """The server process serving this connection's statement."""
    return int(db.query(sql.backend_pid)[0][0])


class HorizonHolder(NamedTuple):
    who: str  # 'pid 123', 'replication slot s1', "prepared transaction 'g'"
    user: str  # '' where unknown (as for state and application)
    application: str
    state: str
    xid: str  # the transaction id it holds the horizon at


def horizon_holders(db: Database) -> list[HorizonHolder]:
    """Everything holding this database's xmin horizon now (see queries.sql)."""
    return [HorizonHolder(*row) for row in db.query(sql.horizon_holders)]


def ping(db: Database) -> None:
    """Raises if the connection is dead."""
    db.query(sql.ping)


def notify_queue_full(db: Database) -> bool:
    """Is the notification queue too full for the insert trigger to notify (a
    listener that stopped reading holds it back)? Raises if the connection is dead."""
    return bool(db.query(sql.notify_queue_full)[0][0])


def cutoff(db: Database, older_than: float | None) -> Cutoff:
    """The database's now(), and now() minus `older_than` seconds."""
    now, before = db.query(sql.cutoff, {"seconds": older_than})[0]
    return Cutoff(now, before)


def prune_keys(db: Database) -> int:
    """Delete the rows of keys with no live task (see claim_keyed); how many."""
    return len(db.query(sql.prune_keys))


def prune(db: Database, *, statuses: Sequence[str], before: datetime, after_id: int,
          limit: int) -> list[int] | None:
    """Delete up to `limit` tasks in `statuses` last changed before `before`, with
    ids above `after_id`; return the ids deleted, or None when another process's
    batch was running (nothing was deleted: try again later)."""
    rows = db.query(sql.prune, {"statuses": list(statuses), "before": before,
                                "after": after_id, "limit": limit})
    if rows == [(None,)]:
        return None
    return [row[0] for row in rows]


class ActiveDepth(NamedTuple):
    pending: int
    in_progress: int
    pages: int  # the table's size now
    reltuples: float  # rows at the last ANALYZE (-1: never analyzed)
    relpages: int  # pages at the last ANALYZE


def active_depth(db: Database) -> ActiveDepth:
    """Pending and running tasks (through their partial indexes) and the table's size."""
    return ActiveDepth(*db.query(sql.depth_active)[0])


def finished_counts(db: Database) -> dict[str, int]:
    """Exact counts of finished tasks by status (scans them: a small table only)."""
    return {status: count for status, count in db.query(sql.depth_finished)}


def status_shares(db: Database) -> dict[str, float] | None:
    """The planner's share of each status at the last ANALYZE; None before one."""
    rows = db.query(sql.status_frequencies)
    if not rows or rows[0][0] is None:
        return None
    return dict(zip(rows[0][0], rows[0][1], strict=False))
