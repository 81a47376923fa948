"""`taskworker schedule`: the periodic tasks, their last and next run."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .. import registry
from ..schedule_listing import listing
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
