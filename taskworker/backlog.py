"""The backlog seen by queue and by task name, and what no running process serves.

`status` and the metrics read the same rows (store.admin.backlog: pending and
in-progress tasks per queue and task name) and the same live processes
(store.processes.live); this module rolls them up, bounds how many series the
metrics export, and turns "nobody will claim these" into one line each.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from .store.admin import Backlog
from .store.processes import Process

NO_NAME = "(no name)"  # tasks without a name, where a label or cell needs text
OTHER = "(other)"  # the rest, past the bound (parentheses: never a valid name)
DEFAULT_HANDLER_HINT = "start a serve without TASK_MODULES or with TASK_HANDLER"


class Total(NamedTuple):
    """Pending and in-progress tasks of one queue, or of one task name."""

    key: str | None  # the queue, or the task name (None: tasks without a name)
    pending: int  # due now
    scheduled: int  # pending, due later
    claimed: int  # in progress, not started: waiting in its process's local queue
    running: int  # in progress, started
    oldest_pending_seconds: float | None

    @property
    def size(self) -> int:
        return self.pending + self.scheduled + self.claimed + self.running


class Unserved(NamedTuple):
    """Pending tasks no live process will claim, and the line that says so."""

    kind: str  # "task": a name no live process knows; "default_handler"; "queue"
    name: str | None  # the task name or the queue (None for default_handler)
    pending: int
    message: str


def by_queue(rows: Iterable[Backlog]) -> list[Total]:
    return _roll_up(rows, lambda row: row.queue)


def by_task(rows: Iterable[Backlog]) -> list[Total]:
    return _roll_up(rows, lambda row: row.task)


def _roll_up(rows: Iterable[Backlog], key: Callable[[Backlog], str | None]) -> list[Total]:
    totals: dict[str | None, Total] = {}
    for row in rows:
        k = key(row)
        totals[k] = _add(totals.get(k, Total(k, 0, 0, 0, 0, None)),
                         Total(k, row.pending, row.scheduled, row.claimed, row.running,
                               row.oldest_pending_seconds))
    return sorted(totals.values(), key=lambda t: (t.key is not None, t.key or ""))


def _add(a: Total, b: Total) -> Total:
    ages = [s for s in (a.oldest_pending_seconds, b.oldest_pending_seconds) if s is not None]
    return Total(a.key, a.pending + b.pending, a.scheduled + b.scheduled,
                 a.claimed + b.claimed, a.running + b.running, max(ages) if ages else None)


def bounded(totals: Sequence[Total], limit: int,
            keep: Collection[str | None] = ()) -> list[Total]:
    """At most `limit` totals: those in `keep` and the largest others, and the
    rest summed under OTHER."""
    if len(totals) <= limit:
        return list(totals)
    ranked = sorted(totals, key=lambda t: (t.key not in keep, -t.size, t.key is None,
                                           t.key or ""))
    rest = Total(OTHER, 0, 0, 0, 0, None)
    for t in ranked[limit - 1:]:
        rest = _add(rest, t)
    return [*ranked[:limit - 1], rest]


def unserved(rows: Iterable[Backlog], processes: Sequence[Process]) -> list[Unserved]:
    """Pending tasks (due or later) that no live process would claim, one entry
    per task name no process knows, one for tasks without a name when no process
    has a default handler, and one per queue for the rest (the name is served,
    but not in that queue)."""
    names: dict[str, int] = {}
    queues: dict[str, int] = {}
    default = 0
    for row in rows:
        waiting = row.pending + row.scheduled
        if not waiting or any(p.serves(row.queue, row.task) for p in processes):
            continue
        if row.task is None and not any(p.default_handler for p in processes):
            default += waiting
        elif row.task is not None and not any(row.task in p.tasks for p in processes):
            names[row.task] = names.get(row.task, 0) + waiting
        else:
            queues[row.queue] = queues.get(row.queue, 0) + waiting
    found = [Unserved("task", name, n, f"no running process serves task {name} ({n} pending)")
             for name, n in sorted(names.items())]
    if default:
        found.append(Unserved("default_handler", None, default,
                              f"{_tasks_wait(default)} for a default handler: "
                              f"{DEFAULT_HANDLER_HINT}"))
    found += [Unserved("queue", queue, n,
                       f"no running process serves queue {queue} ({n} pending)")
              for queue, n in sorted(queues.items())]
    return found


def _tasks_wait(n: int) -> str:
    return "1 task waits" if n == 1 else f"{n} tasks wait"
