"""Preparing the database: `taskworker migrate` and `taskworker seed`."""
from __future__ import annotations

import click

from ..logs import log
from ..store import admin, migrations
from ..store.connection import DatabaseUnavailable
from ..store.database import Direct
from .context import EXIT_RUNTIME, database, fail, load_settings


@click.command()
def migrate() -> None:
    """Create or update the tasks table (safe to run again, or twice at once)."""
    settings = load_settings()
    log.info("Connecting to database: %s", settings.safe_database_url)
    log.info("Running database migration...")
    try:
        migrations.run(settings)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    except Exception as exc:  # a migration the server refused
        fail(f"migration failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
             EXIT_RUNTIME)
    log.info("Migration completed successfully")


@click.command()
@click.option("--count", "-n", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many sample tasks to insert.")
def seed(count: int) -> None:
    """Insert sample pending tasks "Test task 1" ... "Test task N"."""
    settings = load_settings()
    log.info("Connecting to database: %s", settings.safe_database_url)
    with database(settings, "seed") as conn:
        admin.seed(Direct(conn), count)
    log.info("Inserted %d pending tasks", count)
