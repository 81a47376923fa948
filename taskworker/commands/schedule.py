"""`taskworker schedule`: the periodic tasks, their last and next run."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .. import registry
from ..schedules import Schedule, next_tick, show
from ..store import schedules as store
from ..store.database import Direct
from .context import EXIT_CONFIG, database, fail, load_settings
from .text import table

NOT_RUNNING = "none: no running process registers it"


@click.command()
@click.option("--tasks", "-t", "modules", metavar="MODULE[,MODULE]",
              help="Also list what these modules register, even when no serve process "
                   "runs them. [env TASK_MODULES]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
def schedule(modules: str | None, as_json: bool) -> None:
    """List the periodic tasks: schedule, last tick and its run, next tick.

    \b
    The schedules are those the running serve processes registered (each
    process records them while it runs), and those that --tasks / TASK_MODULES
    register. A schedule no running process registers enqueues nothing: its
    NEXT TICK says so. Cron expressions are read in CRON_TZ (UTC).
    \b
    LAST RUN   the task enqueued for the last tick and its status; "skipped":
               its previous run was still pending or running; "pruned": the
               task row has been deleted since
    """
    settings = load_settings({"TASK_MODULES": modules})
    try:
        registry.import_modules(settings.task_modules)
    except registry.RegistryError as exc:
        fail(str(exc), EXIT_CONFIG)
    local = {d.name: d.schedule for d in registry.registered().values() if d.periodic}
    with database(settings, "schedule") as conn:
        db = Direct(conn)
        live = store.live_schedules(db)
        ticks = store.last_ticks(db)
    rows = listing(live, local, ticks, settings.cron_tz, datetime.now(UTC))
    click.echo(json.dumps(rows) if as_json else render(rows))


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


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No periodic task: none registered by a running process or by --tasks."
    lines = [("TASK", "SCHEDULE", "PROCESSES", "LAST TICK", "LAST RUN", "NEXT TICK")]
    for r in rows:
        run = "-"
        if r["last_tick"] is not None:
            run = r["last_status"] if r["last_task_id"] is None \
                else f"ID {r['last_task_id']} {r['last_status']}"
        nxt = r["next_tick"] or (NOT_RUNNING if not r["processes"] else "?")
        lines.append((r["task"], r["schedule"], str(r["processes"]), r["last_tick"] or "-",
                      run, nxt))
    return "\n".join(table(lines, right=frozenset({2})))
