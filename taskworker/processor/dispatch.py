"""The tasks a process holds, and what became of each.

A `Task` is one claim: the row's id and payload, and the attempt number the
claim gave it (fencing: every later write names that attempt). The `InFlight`
map holds every claimed task until its outcome is written; the heartbeat extends
the leases of exactly these.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

DONE = "done"
ERROR = "error"
RETRY = "retry"  # failed, back to pending after a backoff
RELEASE = "release"  # given back to pending untouched, attempt not counted


@dataclass(eq=False)
class Task:
    id: int
    payload: str | None
    attempt: int  # attempts after this claim
    rescues: int  # times an earlier worker was lost running it
    lost: bool = False  # the heartbeat found the lease taken away


@dataclass(eq=False)
class Outcome:
    task: Task
    worker: int  # 0: not run by a worker (given back from the local queue)
    kind: str  # DONE, ERROR, RETRY or RELEASE
    result: str | None = None
    error: str | None = None
    delay: float | None = None  # RETRY: seconds until the task is due again


@dataclass
class InFlight:
    """Claimed tasks by id, until their outcome is written (or found fenced off)."""

    tasks: dict[int, Task] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        self.tasks[task.id] = task

    def discard(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def ids(self) -> list[int]:
        return list(self.tasks)

    def mark_lost(self, task_id: int) -> None:
        task = self.tasks.get(task_id)
        if task is not None:
            task.lost = True

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self.tasks.values()))
