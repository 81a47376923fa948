"""`taskworker prune`: delete finished tasks, in batches (the loop serve's pruner
runs too, with PRUNE_AFTER)."""
from __future__ import annotations

import click

from ..processor.pruner import FINISHED, PRUNE_BATCH, prune_finished
from ..store.database import Direct
from . import text
from .context import database, duration, load_settings


@click.command()
@click.option("--older-than", required=True, metavar="DURATION",
              help="Delete tasks last changed (updated_at) more than DURATION ago: 7d, 12h.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(FINISHED),
              help="Only this status (repeatable). [default: done, error and cancelled]")
@click.option("--batch-size", default=PRUNE_BATCH, show_default=True,
              type=click.IntRange(min=1), help="Rows per DELETE statement.")
def prune(older_than: str, statuses: tuple[str, ...], batch_size: int) -> None:
    """Delete finished tasks; print how many.

    Pending and running tasks are never deleted. Each batch is its own short
    transaction, so workers and producers are not held up while it runs.

    \b
      taskworker prune --older-than 7d
      taskworker prune --older-than 1d --status done
    """
    seconds = duration("--older-than", older_than)
    with database(load_settings(), "prune") as conn:
        deleted = prune_finished(Direct(conn), seconds, statuses or FINISHED, batch_size)
        click.echo(f"Deleted {text.tasks(deleted)}")
