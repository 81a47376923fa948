"""Console entry point: make the process cooperative, then run the CLI.

gevent's monkey patching must happen before anything else imports socket,
threading or time, and psycogreen's wait callback before the first connection
is made; so these are the first lines run, and the CLI is imported after them.
"""
from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

from taskworker.cli import main  # noqa: E402

__all__ = ["main"]
