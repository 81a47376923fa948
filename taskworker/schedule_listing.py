"""The periodic tasks as `taskworker schedule` and the dashboard list them: each
schedule, the live processes registering it, its last tick and run, its next tick."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .schedules import Schedule, next_tick, show
from .store import schedules as store


def listing(live: dict[str, dict[str, Any]], local: dict[str, str | None],
            ticks: dict[str, store.LastTick], tz: str, now: datetime) -> list[dict[str, Any]]:
    """One entry per (task, schedule): the processes registering it, its last
    tick and run, its next tick (None when no live process registers it)."""
    found: dict[tuple[str, str], int] = {}  # (task, schedule) -> live processes
    for schedules in live.values():
        for name, text in schedules.items():
            found[(name, str(text))] = found.get((name, str(text)), 0) + 1
    for name, text in local.items():
        found.setdefault((name, str(text)), 0)
    named = {name for name, _ in found}
    for name in ticks:  # ticks of a schedule nobody registers any more
        if name not in named:
            found[(name, "?")] = 0
    rows = []
    for (name, text), processes in sorted(found.items()):
        last = ticks.get(name)
        upcoming = None
        if processes:
            try:
                upcoming = show(next_tick(Schedule.parse(text), now, tz))
            except ValueError:
                upcoming = None
        rows.append({
            "task": name, "schedule": text, "processes": processes,
            "last_tick": None if last is None else show(last.tick),
            "last_task_id": None if last is None else last.task_id,
            "last_status": None if last is None else last_run(last),
            "next_tick": upcoming})
    return rows


def last_run(last: store.LastTick) -> str:
    if last.task_id is None:
        return "skipped"
    return last.status or "pruned"
