"""Preparing the database: `taskworker migrate` and `taskworker seed`."""
from __future__ import annotations

import click

from ..logs import log
from ..store import admin, migrations
from ..store.connection import DatabaseUnavailable
from ..store.database import Direct
from .context import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    database,
    duration,
    fail,
    keyboard_interrupts,
    load_settings,
)


@click.command()
@click.option("--to", "to", type=click.IntRange(min=1), metavar="VERSION",
              help="Apply the migrations up to this number only.")
@click.option("--lock-timeout", default="1s", show_default=True, metavar="DURATION",
              help="How long a migration waits for a lock on a busy table before it is "
                   "rolled back and tried again (the longest it stalls other sessions).")
@click.option("--retry-for", default="2m", show_default=True, metavar="DURATION",
              help="How long to go on trying before giving up.")
def migrate(to: int | None, lock_timeout: str, retry_for: str) -> None:
    """Create or update the schema (safe to run again, or twice at once, or while
    tasks are enqueued and served). Connect directly, not through a pooler."""
    policy = migrations.LockPolicy(duration("--lock-timeout", lock_timeout),
                                   duration("--retry-for", retry_for))
    if policy.lock_timeout <= 0:
        fail(f"invalid --lock-timeout={lock_timeout!r}: must be more than 0", EXIT_CONFIG)
    settings = load_settings()
    keyboard_interrupts()
    log.info("Connecting to database: %s", settings.safe_database_url)
    log.info("Running database migration...")
    try:
        migrations.run(settings, to, policy)
    except (DatabaseUnavailable, migrations.MigrationError) as exc:
        fail(str(exc), EXIT_RUNTIME)
    except KeyboardInterrupt:
        fail("interrupted (an index left half built is rebuilt by the next migrate)",
             EXIT_INTERRUPTED)
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
