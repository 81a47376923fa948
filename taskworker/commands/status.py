"""`taskworker status`: the queue at a glance, once or every few seconds."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import psycopg2

from ..registry import RateLimit
from ..store import admin
from ..store.connection import DatabaseUnavailable, connect
from ..store.database import Direct, PgConnection, first_line
from . import status_serving, text
from .context import EXIT_CONFIG, database, duration, fail, load_settings

TOP_ERRORS = 5


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
@click.option("--watch", "-w", metavar="[SECONDS]", is_flag=False, flag_value="2",
              help="Refresh every SECONDS (2 if not given) until Ctrl+C.")
@click.option("--workflow", type=int, metavar="ID",
              help="Show one workflow instead: its state and its tasks by status.")
def status(as_json: bool, watch: str | None, workflow: int | None) -> None:
    """Show the queue at a glance.

    A task in progress is "claimed" until its handler starts (claimed by a
    process, waiting in its local queue: started_at not set yet), "running"
    once it has started.

    \b
    STATUS   tasks in each status; "scheduled for later": pending tasks not
             due yet (waiting out a retry backoff, or enqueued with --delay);
             "claimed, not started": tasks in progress not running yet
    oldest due task waiting
             time since the run_at of the oldest pending task that is due
    rescued in the last hour
             tasks rescued at least once (their process stopped renewing the
             lease) whose row changed in the last hour (the schema keeps no
             rescue times: a good estimate, not an exact count)
    pending retries
             pending tasks with attempts > 0: they failed or lost their worker
             and wait to run again (a count now, not over the last hour)
    QUEUE, TASK
             pending (due now), scheduled (due later), claimed and running
             tasks, and the oldest due task's wait, per queue and per task name
    PROCESS  serve processes alive (seen within two leases): what they serve,
             how long they have run, when their heartbeat last wrote, tasks held
             (claimed and running)
    PAUSED   queues paused with `taskworker pause`
    RATE LIMIT
             each task name with a rate_limit: the limit, its starts in
             about the last window, and its pending tasks that are due
    Warning  pending tasks no running process would claim (a task name none
             knows, no default handler, a queue none serves)
    HOLDER   claimed and running tasks per process (locked_by =
             host:pid:random) and the time left on its soonest lease
             ("expired": it stopped renewing)
    ERRORS   the 5 most frequent kinds of error among tasks in error: one
             example each; errors of the same exception type whose messages
             differ only in numbers, ids or quoted values are one kind

    With --workflow ID: the workflow's state (running while a task of it is
    pending, waiting or in progress; then done, failed if a task ended in
    error, or cancelled), its tasks by status and their ids.
    """
    if workflow is not None:
        show_workflow(workflow, as_json)
        return
    interval = None if watch is None else duration("--watch", watch)
    if interval is not None and interval <= 0:
        fail(f"invalid --watch={watch!r}: must be greater than 0", EXIT_CONFIG)
    settings = load_settings()
    with database(settings, "status") as conn:
        if interval is None:
            snap = snapshot(conn)
            click.echo(json.dumps(snap) if as_json else render(snap))
        else:
            watch_status(conn, lambda: connect(settings, name="taskworker status"),
                         interval, as_json)


def show_workflow(workflow_id: int, as_json: bool) -> None:
    with database(load_settings(), "status") as conn:
        flow = admin.workflow_state(Direct(conn), workflow_id)
    if not flow.counts:
        fail(f"no workflow with id {workflow_id}", 1)
    if as_json:
        click.echo(json.dumps({"workflow": workflow_id, "state": flow.state,
                               "counts": flow.counts, "first_id": flow.first_id,
                               "last_id": flow.last_id}))
        return
    click.echo(f"Workflow {workflow_id}: {flow.state} (tasks {flow.first_id} to "
               f"{flow.last_id})\n")
    rows = [("STATUS", "TASKS")] + [(s, str(n)) for s, n in sorted(flow.counts.items())]
    click.echo("\n".join(text.table(rows, right=frozenset({1}))))


def snapshot(conn: PgConnection) -> dict[str, Any]:
    """Everything `status` shows, read in one REPEATABLE READ, read-only transaction."""
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    db = Direct(conn)
    try:
        summary = admin.summary(db)
        holders = admin.holders(db)
        errors = admin.top_errors(db, TOP_ERRORS)
        rates = admin.rate_limits(db)
        serving = status_serving.read(db, {h.locked_by: h.tasks for h in holders})
    finally:
        if not conn.closed:  # closed: interrupted (Ctrl+C) or lost mid-query
            conn.rollback()
    oldest = summary.oldest_due_seconds
    return {
        "counts": summary.counts,
        "scheduled": summary.scheduled,
        "claimed": summary.claimed,
        "oldest_pending_seconds": None if oldest is None else round(oldest, 3),
        "rescued_last_hour": summary.rescued_last_hour,
        "retrying": summary.retrying,
        "holders": [{"locked_by": h.locked_by, "tasks": h.tasks, "claimed": h.claimed,
                     "running": h.running,
                     "lease_left_seconds": None if h.lease_left_seconds is None
                     else round(h.lease_left_seconds, 3)}
                    for h in holders],
        "top_errors": [{"error": e.error, "tasks": e.tasks, "messages": e.messages}
                       for e in errors],
        "rate_limits": [{"task": r.task, "limit": r.starts, "per_seconds": r.per,
                         "spent": r.spent, "waiting": r.waiting} for r in rates],
        **serving,
    }


def render(snap: dict[str, Any]) -> str:
    """The snapshot as aligned tables."""
    counts = snap["counts"]
    rows = [("STATUS", "TASKS", "")]
    notes = {"pending": f"{snap['scheduled']} scheduled for later" if snap["scheduled"] else "",
             "in_progress": f"{snap['claimed']} claimed, not started" if snap["claimed"] else ""}
    for name in admin.STATUSES:
        rows.append((name, str(counts[name]), notes.get(name, "")))
    oldest = snap["oldest_pending_seconds"]
    lines = text.table(rows, right=frozenset({1}))
    lines += [""] + text.table([
        ("oldest due task waiting", "-" if oldest is None else text.age(oldest)),
        ("rescued in the last hour", str(snap["rescued_last_hour"])),
        ("pending retries", str(snap["retrying"])),
    ], right=frozenset({1}))
    lines.append("")
    lines += status_serving.render(snap)
    if snap["rate_limits"]:
        lines += text.table([("RATE LIMIT", "LIMIT", "STARTED", "WAITING")] + [
            (r["task"], str(RateLimit(r["limit"], r["per_seconds"])), str(r["spent"]),
             str(r["waiting"])) for r in snap["rate_limits"]], right=frozenset({2, 3}))
        lines.append("(STARTED: starts in about the last window; WAITING: pending tasks "
                     "that are due)")
        lines.append("")
    if snap["holders"]:
        held = [("HOLDER (locked_by)", "CLAIMED", "RUNNING", "LEASE LEFT")]
        for h in snap["holders"]:
            left = h["lease_left_seconds"]
            shown = "-" if left is None else (
                text.age(left) if left >= 0 else f"expired {text.age(-left)} ago")
            held.append((h["locked_by"] or "(none)", str(h["claimed"]), str(h["running"]),
                         shown))
        lines += text.table(held, right=frozenset({1, 2}))
    else:
        lines.append("No task is running.")
    lines.append("")
    if snap["top_errors"]:
        errors = [(f"ERRORS (top {TOP_ERRORS})", "TASKS", "")]
        errors += [(text.one_line(e["error"], 72), str(e["tasks"]),
                    f"{e['messages']} messages alike" if e["messages"] > 1 else "")
                   for e in snap["top_errors"]]
        lines += text.table(errors, right=frozenset({1}))
        if any(e["messages"] > 1 for e in snap["top_errors"]):
            lines.append("(alike: the same exception type, the messages differ only in "
                         "numbers, ids or quoted values; one example shown)")
    else:
        lines.append("No task has ended in error.")
    return "\n".join(lines)


def watch_status(conn: PgConnection | None, reconnect: Callable[[], PgConnection],
                 interval: float, as_json: bool) -> None:
    """Print the status every `interval` seconds until Ctrl+C.

    On a terminal the screen is cleared before each table; with --json each
    refresh is one JSON line. A lost database shows as an error line and the
    connection is opened again at the next refresh.
    """
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = reconnect()
                snap: dict[str, Any] | None = snapshot(conn)
                problem = ""
            except (DatabaseUnavailable, psycopg2.Error) as exc:
                snap, problem = None, f"Error: {first_line(exc)} (trying again)"
                if conn is not None:
                    conn.close()
                    conn = None
            if as_json:
                if snap is not None:
                    click.echo(json.dumps({"time": text.now(), **snap}))
                else:
                    click.echo(problem, err=True)
            else:
                if clear:
                    click.clear()
                click.echo(f"Every {interval:g}s: taskworker status    {text.now()}\n")
                click.echo(render(snap) if snap is not None else problem)
                click.echo()
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        if conn is not None:
            conn.close()
