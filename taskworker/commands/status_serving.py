"""The sections of `taskworker status` about who serves what: the backlog by
queue and by task name, the live serve processes, paused queues, and a line for
each set of pending tasks no running process would claim.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import backlog
from ..store import admin, processes
from ..store.database import Database
from . import text

MAX_ROWS = 50  # rows of the by-queue and by-name tables (the rest summed under "(other)")


def read(db: Database, held: dict[str | None, int]) -> dict[str, Any]:
    """The sections' part of the snapshot (JSON-ready); `held`: tasks per locked_by."""
    rows = admin.backlog(db)
    live = processes.live(db)
    paused = processes.paused(db)
    paused_names = {p.queue for p in paused}
    return {
        "queues": [{"queue": t.key, **_counts(t), "paused": t.key in paused_names}
                   for t in backlog.by_queue(rows)],
        "tasks": [{"task": t.key, **_counts(t)} for t in backlog.by_task(rows)],
        "processes": [{
            "holder": p.holder, "host": p.host, "pid": p.pid, "queues": p.queues,
            "tasks": p.tasks, "default_handler": p.default_handler,
            "schedules": p.schedules, "started_at": p.started_at.isoformat(),
            "up_seconds": round(p.up_seconds, 3),
            "seen_seconds_ago": round(p.seen_seconds_ago, 3),
            "tasks_held": held.get(p.holder, 0)} for p in live],
        "paused_queues": [{"queue": p.queue, "paused_at": p.paused_at.isoformat(),
                           "paused_seconds": round(p.seconds, 3)} for p in paused],
        "unserved": [{"kind": u.kind, "name": u.name, "pending": u.pending,
                      "message": u.message} for u in backlog.unserved(rows, live)],
    }


def _counts(t: backlog.Total) -> dict[str, Any]:
    oldest = t.oldest_pending_seconds
    return {"pending": t.pending, "scheduled": t.scheduled, "claimed": t.claimed,
            "running": t.running,
            "oldest_pending_seconds": None if oldest is None else round(oldest, 3)}


def render(snap: dict[str, Any]) -> list[str]:
    """The sections as lines: each table followed by an empty line."""
    lines: list[str] = []
    if snap["queues"]:
        lines += _backlog_table("QUEUE", snap["queues"], "queue",
                                {q["queue"] for q in snap["queues"] if q["paused"]})
        lines += _backlog_table("TASK", snap["tasks"], "task", set())
    if snap["processes"]:
        rows = [("PROCESS (holder)", "HOST", "PID", "QUEUES", "TASKS", "UP", "SEEN", "HELD")]
        for p in snap["processes"]:
            served = [*p["tasks"], *([backlog.NO_NAME] if p["default_handler"] else [])]
            rows.append((p["holder"], p["host"], str(p["pid"]),
                         text.one_line(",".join(p["queues"]), 30) if p["queues"] is not None
                         else "all", text.one_line(",".join(served), 40) or "-",
                         text.age(p["up_seconds"]), f"{text.age(p['seen_seconds_ago'])} ago",
                         str(p["tasks_held"])))
        lines += text.table(rows, right=frozenset({2, 7}))
    else:
        lines.append("No serve process is running.")
    lines.append("")
    if snap["paused_queues"]:
        paused = [("PAUSED QUEUE", "SINCE")]
        paused += [(p["queue"], f"{text.age(p['paused_seconds'])} ago")
                   for p in snap["paused_queues"]]
        lines += text.table(paused) + [""]
    if snap["unserved"]:
        lines += [f"Warning: {u['message']}" for u in snap["unserved"]] + [""]
    return lines


def _backlog_table(title: str, entries: Sequence[dict[str, Any]], key: str,
                   paused: set[str]) -> list[str]:
    """By name; past MAX_ROWS the largest, and the rest summed under "(other)"."""
    totals = backlog.bounded([backlog.Total(e[key], e["pending"], e["scheduled"], e["claimed"],
                                            e["running"], e["oldest_pending_seconds"])
                              for e in entries], MAX_ROWS)
    rows = [(title, "PENDING", "SCHEDULED", "CLAIMED", "RUNNING", "OLDEST PENDING", "")]
    for t in totals:
        name = backlog.NO_NAME if t.key is None else t.key
        oldest = t.oldest_pending_seconds
        rows.append((name, str(t.pending), str(t.scheduled), str(t.claimed), str(t.running),
                     "-" if oldest is None else text.age(oldest),
                     "paused" if name in paused else ""))
    return text.table(rows, right=frozenset({1, 2, 3, 4, 5})) + [""]
