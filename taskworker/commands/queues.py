"""`taskworker pause QUEUE...` and `resume QUEUE...`: stop and restart claiming
from queues, across every process, without restarting any.

A paused queue is a row in taskworker_paused_queues, which every claim reads:
tasks keep being enqueued into it, running ones finish, and no process starts
another until it is resumed. Both commands are idempotent.
"""
from __future__ import annotations

import click

from ..registry import check_name
from ..store import processes
from ..store import tasks as store
from ..store.database import Direct
from .context import EXIT_CONFIG, database, fail, load_settings


def _names(queues: tuple[str, ...]) -> list[str]:
    for queue in queues:
        try:
            check_name(queue, "queue")
        except ValueError as exc:
            fail(str(exc), EXIT_CONFIG)
    return list(dict.fromkeys(queues))


@click.command()
@click.argument("queues", nargs=-1, required=True, metavar="QUEUE...")
def pause(queues: tuple[str, ...]) -> None:
    """Stop claiming from these queues, in every process.

    Tasks can still be enqueued into a paused queue; tasks already running
    finish. A queue that has no task yet can be paused too. Undo with `resume`.
    """
    names = _names(queues)
    with database(load_settings(), "pause") as conn:
        paused = processes.pause(Direct(conn), names)
    for queue in names:
        click.echo(f"Paused queue {queue}" if queue in paused
                   else f"Queue {queue} was already paused")


@click.command()
@click.argument("queues", nargs=-1, required=True, metavar="QUEUE...")
def resume(queues: tuple[str, ...]) -> None:
    """Claim from these paused queues again, in every process."""
    names = _names(queues)
    with database(load_settings(), "resume") as conn:
        db = Direct(conn)
        resumed = processes.resume(db, names)
        if resumed:
            store.wake_others(db)  # idle processes claim from them now, not at their next poll
    for queue in names:
        click.echo(f"Resumed queue {queue}" if queue in resumed
                   else f"Queue {queue} was not paused")
