"""`python -m taskworker.django COMMAND ...`, what `python manage.py taskworker`
runs: gevent's patching and psycogreen's first (taskworker.cooperative, on its
import), then Django (DJANGO_SETTINGS_MODULE), its apps' task modules, and
taskworker's command line with Django's settings beneath .env and the
environment (conf.py).
"""
from taskworker import cooperative  # noqa: I001  (first: it patches)

import os
import sys


def main() -> None:
    import django

    from taskworker.commands import cli, context

    from . import conf

    cwd = os.getcwd()
    if sys.path[:1] not in ([""], [cwd]):
        sys.path.insert(0, cwd)
    django.setup()
    try:
        context.defaults.update(conf.variables())
    except conf.ConfigurationError as exc:
        context.fail(str(exc), context.EXIT_CONFIG)
    cli(prog_name="manage.py taskworker")


if __name__ == "__main__":
    assert cooperative  # (imported for its patching)
    main()
