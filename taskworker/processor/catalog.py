"""What this process serves, and what runs each task it claims.

Built once at start from the settings (QUEUES, TASK_HANDLER, TASK_MODULES) and the
tasks registered by the imported modules. The fetcher asks it what to claim (the
queues, the names it knows, the room left in capped queues, the names with a
concurrency limit); the worker asks it how to run a claimed task (the function,
its timeout and its retry rule: a task's own options, else the global settings).

A process never claims a name it does not know: a rolling deploy that adds a
task leaves the new name's rows to the processes that have it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..registry import TaskDef
from ..settings import Settings
from ..store.tasks import Served
from .outcomes import RetryPolicy


@dataclass(frozen=True)
class Job:
    """How to run the tasks of one name."""

    fn: Callable[..., Any]
    takes_task: bool
    timeout: float  # seconds; 0: no limit
    retries: RetryPolicy
    limited: bool  # holds a max_running slot while it runs
    named: bool = False  # a registered task (not the default handler): it takes arguments
    signature: inspect.Signature | None = None  # its function's, if it has one


class Catalog:
    def __init__(self, settings: Settings, default: tuple[Callable[..., Any], bool] | None,
                 definitions: Mapping[str, TaskDef]) -> None:
        self.definitions = dict(definitions)
        base = RetryPolicy.from_settings(settings)
        self.jobs: dict[str | None, Job] = {}
        if default is not None:
            fn, takes_task = default
            self.jobs[None] = Job(fn, takes_task, settings.task_timeout, base, False)
        for name, d in self.definitions.items():
            retries = RetryPolicy(
                base.max_retries if d.max_retries is None else d.max_retries,
                base.backoff if d.retry_backoff is None else d.retry_backoff)
            timeout = settings.task_timeout if d.timeout is None else d.timeout
            self.jobs[name] = Job(d.fn, d.takes_task, timeout, retries, d.max_running is not None,
                                  True, d.signature)
        self.queues = None if settings.queues is None else [q for q, _ in settings.queues]
        self.caps = {q: cap for q, cap in settings.queues or () if cap is not None}
        self.limits = {name: d.max_running for name, d in self.definitions.items()
                       if d.max_running is not None}
        # With a name limited per concurrency key, the keyed calls of every name
        # it knows (None: no limit per key), claimed by claim_keyed; else none.
        self.per_key: dict[str, int | None] = {
            name: d.max_running_per_key for name, d in sorted(self.definitions.items())
        } if any(d.max_running_per_key for d in self.definitions.values()) else {}
        self.rates = {name: d.rate_limit for name, d in self.definitions.items()
                      if d.rate_limit is not None}
        # A token taken stays spent for the window and a start guard: a claimed
        # task's handler must start within the guard (the worker gives back one
        # that could not), so that two starts on one token, each after its claim,
        # are a whole window apart by the handlers' own clocks. 1/20 of the
        # window, at most 1 s: a limit reaches count / (window + guard).
        self.start_guards = {name: start_guard(rate.per) for name, rate in self.rates.items()}
        self._spans = {name: rate.per + self.start_guards[name]
                       for name, rate in sorted(self.rates.items())}
        # The task names claimed ('' for tasks without a name), and the limited ones.
        self.names = sorted("" if name is None else name for name in self.jobs)
        self._limited = sorted(self.limits)

    def served(self, held: Mapping[str, int], idle: int = 0) -> Served:
        """What to claim now, `held` being this process's tasks per queue and
        `idle` its workers with nothing to run (rate-limited tasks are claimed
        only for them)."""
        rooms = {q: max(cap - held.get(q, 0), 0) for q, cap in self.caps.items()}
        return Served(self.queues, self.names, rooms, self._limited, self._spans, idle)

    def job(self, name: str | None) -> Job | None:
        return self.jobs.get(name)

    def periodic(self) -> list[TaskDef]:
        return [d for d in self.definitions.values() if d.periodic]


def start_guard(per: float) -> float:
    """Seconds within which a rate-limited task's handler must start after its
    claim was sent (see Catalog.start_guards)."""
    return min(per / 20, 1.0)
