"""`python manage.py taskworker COMMAND ...`: any taskworker command (serve,
migrate, status, enqueue, show, ...), configured from Django's settings.

gevent must patch the standard library before anything imports it, and
manage.py has imported Django (threading, socket) before this module runs. So
the command replaces this process (same pid, same signals) with `python -m
taskworker.django ...`, which patches first, then sets Django up (__main__.py).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = ("Run a taskworker command (serve, migrate, status, enqueue, show, retry, "
            "cancel, ...) with the settings of this project: "
            "`python manage.py taskworker serve --help`.")

    def run_from_argv(self, argv: list[str]) -> None:
        # argv: [manage.py, "taskworker", *the command's own arguments]
        os.execve(sys.executable, [sys.executable, "-m", "taskworker.django", *argv[2:]],
                  child_environment())

    def handle(self, *args: Any, **options: Any) -> None:  # (call_command: no exec)
        raise NotImplementedError("run `python manage.py taskworker ...` from a shell: it "
                                  "replaces the process with a gevent-patched one")


def child_environment() -> dict[str, str]:
    """This environment, with the folder of manage.py importable (`python -m`
    puts only the current folder on the path) and the settings module named."""
    env = dict(os.environ)
    here = sys.path[0] or os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    from django.conf import settings

    env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
    return env
