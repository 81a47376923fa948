"""Console entry point: make the process cooperative, then run the CLI.

gevent's monkey patching must happen before anything else imports socket,
threading or time, and psycogreen's wait callback before the first connection
is made; so these are the first lines run, and the CLI is imported after them.
"""
import os
import signal
import sys

# Ctrl+C while the interpreter is still importing: nothing is claimed yet, so
# leave quietly instead of printing a KeyboardInterrupt traceback. `serve`
# replaces this with its graceful handler once it runs.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from gevent import monkey  # noqa: E402

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

from taskworker import commands  # noqa: E402

__all__ = ["main"]


def main() -> None:
    # The current folder first on the import path, as `python -m taskworker` has
    # it: a console script's path starts with its own bin/ folder instead, so
    # `TASK_HANDLER=myapp.tasks:shout taskworker serve`, run from the folder
    # holding myapp/, would fail with "No module named 'myapp'". Celery, rq and
    # procrastinate put the current folder first for the same reason.
    cwd = os.getcwd()
    if sys.path[:1] not in ([""], [cwd]):
        sys.path.insert(0, cwd)
    commands.main()
