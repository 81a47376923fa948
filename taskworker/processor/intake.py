"""What a claim's rows become: tasks handed to the workers, in the claim's order.

A payload came with the claim when it was small enough (see Fetcher.plan);
a larger one is loaded here within CLAIM_BYTES per claim (the first task
always), else its task is given back untouched for a later claim; a payload over
MAX_PAYLOAD_BYTES is never run: its task ends in error. Both lanes of the
exchange (exchange.py) take their claims' rows in here.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from ..logs import log
from ..settings import Settings
from ..store import tasks as store
from ..store.connection import ReconnectingConnection
from ..store.tasks import ClaimedTask
from . import memory
from .dispatch import Dispatch
from .outcomes import GIVE_BACK, REFUSE, Outcome

CLAIM_BYTES = 4 * 1024 * 1024  # payload bytes one claim loads (at least one task)


class Intake:
    def __init__(self, settings: Settings, holder: str, dispatch: Dispatch,
                 outcome: Callable[[Outcome], None]) -> None:
        self.settings = settings
        self.holder = holder
        self.dispatch = dispatch
        self.outcome = outcome  # hands an outcome to the completer
        self.claimed = 0  # tasks handed to the workers
        self.refused = 0  # tasks ended for a payload over MAX_PAYLOAD_BYTES

    def take_in(self, db: ReconnectingConnection, rows: list[store.Claimed],
                claimed_at: float) -> tuple[list[ClaimedTask], bool]:
        """Hand a claim's tasks to the workers (loading the payloads that did not
        come with it, on `db`, the claim's connection); return them, and whether
        more may be waiting (a queue got all the claim could give it)."""
        self.dispatch.claimed_in(time.monotonic() - claimed_at)
        limit = self.settings.max_payload_bytes
        per_queue: dict[str, int] = {}
        for row in rows:
            per_queue[row.task.queue] = per_queue.get(row.task.queue, 0) + 1
        more = any(per_queue[row.task.queue] >= row.share for row in rows)
        tasks = [row.task for row in rows if row.loaded and row.size <= limit]
        loaded = sum(row.size for row in rows if row.loaded)
        wanted: list[ClaimedTask] = []
        for row in rows:
            if row.size > limit:
                self._refuse(row.task, row.size)
            elif row.loaded:
                continue
            elif not tasks and not wanted or loaded + row.size <= CLAIM_BYTES:
                wanted.append(row.task)
                loaded += row.size
            else:
                self.outcome(Outcome(row.task, 0, GIVE_BACK))  # for a later claim
        if wanted:
            found = store.payloads(db, holder=self.holder, holds=[t.hold for t in wanted])
            order = {row.task.id: n for n, row in enumerate(rows)}  # the claim's order
            tasks = sorted(tasks + [t._replace(payload=found[t.id]) for t in wanted
                                    if t.id in found], key=lambda t: order[t.id])
        self.dispatch.hand_out(tasks, claimed_at)
        if loaded >= memory.LARGE:
            db.recycle()  # give back the buffer that received them
        self.claimed += len(tasks)
        return tasks, more

    def _refuse(self, task: ClaimedTask, size: int) -> None:
        """End a task whose payload is over MAX_PAYLOAD_BYTES, unrun."""
        limit = self.settings.max_payload_bytes
        message = f"payload is {size} bytes, over MAX_PAYLOAD_BYTES={limit}"
        log.warning("Task ID: %d failed: %s", task.id, message, extra={"task_id": task.id})
        self.refused += 1
        self.outcome(Outcome(task, 0, REFUSE, error=message))
