"""Looking at and steering single tasks: `taskworker show`, `retry`, `cancel`."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from .. import codec
from ..store import admin, tasks
from ..store.database import Direct
from . import text
from .context import EXIT_CONFIG, CommandError, database, duration, fail, load_settings

RETRY_BATCH = 10000  # rows per UPDATE of retry --all-errors
JSON_COLUMNS = ("arguments", "return_value")  # jsonb: printed as indented JSON


@click.command()
@click.argument("task_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")
def show(task_id: int, as_json: bool) -> None:
    """Print one task, every column: a call's arguments and return value as
    indented JSON, a traceback line by line (--json: arguments and return_value
    as JSON values, the traceback as one string).

    A task in progress is "claimed, not started" while it waits in its
    process's local queue (started_at not set), "running" once its handler has
    started (started_at: when).
    """
    with database(load_settings(), "show") as conn:
        db = Direct(conn)
        row = admin.task(db, task_id)
        if row is None:
            raise CommandError(f"no task with id {task_id}")
        place = admin.workflow_place(db, task_id) if row.get("workflow_id") else None
        flow = admin.workflow_state(db, place.workflow_id) if place else None
    if as_json:
        if place is not None and flow is not None:
            row["workflow"] = {"state": flow.state, "tasks": flow.counts,
                               "parents": [p._asdict() for p in place.parents],
                               "parents_by_status": place.parent_counts,
                               "waiting_for": place.waiting_for,
                               "children": [c._asdict() for c in place.children]}
        click.echo(json.dumps(row, default=json_value))
        return
    width = max(map(len, row)) + 2
    for name, value in row.items():
        if value is None:
            shown = "(null)"
        elif name in JSON_COLUMNS:  # jsonb, decoded by psycopg2
            shown = text.printable(codec.readable(value))
        elif name == "traceback":  # its lines, without the empty one after the last
            shown = text.printable(str(value).rstrip("\n"))
        else:
            shown = text.printable(str(value))
        if name == "status" and value == "in_progress":  # claimed, or running
            state = admin.state(value, row.get("started_at") is not None)
            shown += f" ({state}, not started)" if state == admin.CLAIMED else f" ({state})"
        first, *rest = shown.split("\n") or [""]
        click.echo(f"{name:<{width}}{first}".rstrip())
        for more in rest:
            click.echo(f"{'':<{width}}{more}".rstrip())
    if place is not None and flow is not None:
        click.echo("")
        click.echo("\n".join(workflow_lines(task_id, row["status"], place, flow)))


def workflow_lines(task_id: int, status: str, place: admin.Place,
                   flow: admin.WorkflowState) -> list[str]:
    """Where a task stands in its workflow, for `show`."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(flow.counts.items()))
    lines = [f"workflow {place.workflow_id}: {flow.state} ({counts}; tasks "
             f"{flow.first_id} to {flow.last_id}; `taskworker status --workflow "
             f"{place.workflow_id}`)"]
    total = sum(place.parent_counts.values())
    if total:
        verb = "waits for" if status == "waiting" else "input from"
        left = "" if place.waiting_for is None else f", {place.waiting_for} not done yet"
        by = ", ".join(f"{n} {s}" for s, n in sorted(place.parent_counts.items()))
        shown = ", ".join(f"{p.id} ({p.task}, {p.status})" for p in place.parents)
        more = f", ... ({total - len(place.parents)} more)" if total > len(place.parents) else ""
        lines.append(f"parents: {verb} {text.tasks(total)} ({by}{left}): {shown}{more}")
    else:
        lines.append("parents: none (a first task)")
    if place.children:
        shown = ", ".join(f"{c.id} ({c.task}, {c.status})" for c in place.children)
        lines.append(f"children: its result goes to {shown}")
    else:
        lines.append("children: none (its result is the workflow's)")
    return lines


@click.command()
@click.argument("ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--all-errors", is_flag=True, help="Every task in error instead of IDs.")
@click.option("--since", metavar="DURATION",
              help="With --all-errors: only tasks that ended within DURATION (1h, 2d).")
def retry(ids: tuple[int, ...], all_errors: bool, since: str | None) -> None:
    """Put tasks in error back to pending, due now; print how many.

    A retried task starts over as if new: attempts and rescues go back to 0, so
    it gets the whole MAX_RETRIES and MAX_RESCUES budget again (a task parked as
    "abandoned" runs again too). Its error column keeps the last error. A task
    whose unique key a pending or running task holds is skipped, with a line
    saying so (of several with the same key, the lowest id is retried). Exit
    status 1 when a named ID was not retried, with one line for each.
    """
    if bool(ids) == all_errors:
        fail("give task IDs or --all-errors (not both)", EXIT_CONFIG)
    if since is not None and not all_errors:
        fail("--since goes with --all-errors", EXIT_CONFIG)
    seconds = None if since is None else duration("--since", since)
    wanted = list(dict.fromkeys(ids)) if ids else None
    retried: set[int] = set()
    with database(load_settings(), "retry") as conn:
        db = Direct(conn)
        # Fixed once: batches agree on "since", and a task failing again while
        # the command runs (after `now`) is not retried twice.
        cut = tasks.cutoff(db, seconds)
        while got := admin.retry(db, ids=wanted, since=cut.before, before=cut.now,
                                 limit=RETRY_BATCH):
            retried.update(got)
        if retried:
            tasks.wake_others(db)
        skipped = {b.id: b for b in admin.blocked(db, ids=wanted, since=cut.before,
                                                   before=cut.now) if b.id not in retried}
        click.echo(f"Retried {text.tasks(len(retried))}"
                   + (f"; skipped {len(skipped)} whose unique key a live task holds"
                      if skipped else ""))
        for b in skipped.values() if wanted is None else ():
            click.echo(f"Skipped task {b.id}: {b.reason}")
        left = [i for i in wanted or () if i not in retried]
        for task_id, state in states(db, left).items():
            if task_id in skipped:
                click.echo(f"Error: task {task_id} skipped: {skipped[task_id].reason}",
                           err=True)
            elif state.status is None:
                click.echo(f"Error: no task with id {task_id}", err=True)
            elif state.status == "error":
                click.echo(f"Error: task {task_id} is busy (another command holds it): "
                           "try again", err=True)
            else:
                click.echo(f"Error: task {task_id} is {state.status}: only tasks in error "
                           "are retried", err=True)
    sys.exit(1 if left else 0)


@click.command()
@click.argument("ids", nargs=-1, type=int, metavar="ID...")
@click.option("--workflow", "workflow", type=int, metavar="WORKFLOW_ID",
              help="Cancel a workflow's tasks instead of IDs.")
def cancel(ids: tuple[int, ...], workflow: int | None) -> None:
    """Cancel tasks, saying in one line per ID what happened: a pending one is
    cancelled at once (no worker will run it); a claimed or running one is asked
    to stop: its process stops the handler within about a second (at its next
    heartbeat with LISTEN=false) and writes status cancelled (if its process
    died, the rescue does). A workflow's step waiting for others is cancelled at
    once, and so is everything that waits for it. The stored error names who
    asked (`cancelled: by taskworker cancel`). Exit status 0 when every ID was
    cancelled or asked, else 1 (a finished task, or no such task: the line goes
    to stderr).

    With --workflow: every task of the workflow that has not ended, as above
    (what waits and what is pending at once, what runs asked to stop); exit
    status 1 when it had none left.
    """
    if bool(ids) == (workflow is not None):
        fail("give task IDs or --workflow (not both)", EXIT_CONFIG)
    if workflow is not None:
        cancel_workflow(workflow)
        return
    wanted = list(dict.fromkeys(ids))
    with database(load_settings(), "cancel") as conn:
        db = Direct(conn)
        done = admin.cancel(db, wanted)
        for task_id in wanted:
            if task_id in done.cancelled:
                click.echo(f"Task {task_id}: cancelled")
            elif task_id in done.requested:
                click.echo(f"Task {task_id}: running; asked its process to stop it (it "
                           "ends cancelled)")
        left = [i for i in wanted if i not in done.cancelled and i not in done.requested]
        for task_id, state in states(db, left).items():
            if state.status is None:
                click.echo(f"Task {task_id}: not cancelled: no task has this id", err=True)
            else:
                click.echo(f"Task {task_id}: not cancelled: it is {state.status} (only "
                           "pending and running tasks can be cancelled)", err=True)
    sys.exit(1 if left else 0)


def cancel_workflow(workflow_id: int) -> None:
    with database(load_settings(), "cancel") as conn:
        db = Direct(conn)
        done = admin.cancel_workflow(db, workflow_id)
        flow = admin.workflow_state(db, workflow_id)
    if not flow.counts:
        click.echo(f"Error: no workflow with id {workflow_id}", err=True)
        sys.exit(1)
    click.echo(f"Workflow {workflow_id}: cancelled {text.tasks(len(done.cancelled))}"
               + (f"; asked the processes of {text.tasks(len(done.requested))} running "
                  "to stop them" if done.requested else ""))
    if not done.cancelled and not done.requested:
        click.echo(f"Error: workflow {workflow_id} has ended ({flow.state}): nothing to "
                   "cancel", err=True)
        sys.exit(1)


def states(db: Direct, ids: Sequence[int]) -> dict[int, admin.TaskState]:
    """Why the commands left `ids` alone: their status and holder (none asked: no query)."""
    return admin.states(db, ids) if ids else {}


def json_value(value: Any) -> Any:
    """JSON for the column types json.dumps does not know."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)
