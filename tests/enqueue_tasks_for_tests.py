"""Named tasks declared with a queue and a priority, for the enqueue tests: the
pytest process imports this module (enqueue then fills those in), and `taskworker
enqueue --task` imports it as TASK_MODULES."""

from __future__ import annotations

from taskworker import registry


@registry.task("report", queue="reports", priority=7)
def report(payload: str) -> None:
    """Declares where "report" tasks go; never run by these tests."""


@registry.task("tidy", queue="chores")  # no priority: enqueue's default 0
def tidy(payload: str) -> None:
    """A queue without a priority."""
