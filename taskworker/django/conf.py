"""Django's settings as taskworker's: the variables `manage.py taskworker`
starts from, beneath .env and the environment (which win, as everywhere).

    TASKWORKER = {                    # optional; any variable of `serve --help`
        "WORKER_COUNT": 20,
        "QUEUES": "default,mail",
        "TASK_MODULES": ["myproject.jobs"],   # besides each installed app's tasks.py
        "DATABASE": "default",        # the DATABASES alias (default "default")
    }

DATABASE_URL is the DATABASES entry's connection, unless TASKWORKER (or the
environment) names one. TASK_MODULES is every installed app's `tasks` module,
then TASKWORKER's own: each is imported here, and every task it registers (a
Django `@task` through TaskworkerBackend, or an `@taskworker.task`) is run
between two `close_old_connections()` (tasks.closing).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import module_has_submodule

from ..registry import registered, wrap
from ..settings import FIELDS
from . import tasks

# Keys of a DATABASES entry's OPTIONS that are Django's or the driver's, not libpq's.
NOT_LIBPQ = {"isolation_level", "pool", "server_side_binding", "assume_role",
             "cursor_factory", "context"}


class ConfigurationError(Exception):
    """TASKWORKER or DATABASES cannot be used; str() is one line."""


def variables() -> dict[str, str]:
    """taskworker's variables from Django's settings; the apps' task modules
    imported and their tasks wrapped."""
    conf: Mapping[str, Any] = getattr(settings, "TASKWORKER", {})
    unknown = sorted(set(conf) - set(FIELDS) - {"DATABASE"})
    if unknown:
        raise ConfigurationError(f"settings.TASKWORKER: unknown key {unknown[0]!r} (keys are "
                                 "taskworker's variables, as `serve --help` lists them, and "
                                 "DATABASE)")
    values = {key: text(value) for key, value in conf.items() if key != "DATABASE"}
    alias = conf.get("DATABASE", DEFAULT_DB_ALIAS)
    if "DATABASE_URL" not in values:
        values["DATABASE_URL"] = database_url(alias)
    modules = discovered() + [m for m in values.get("TASK_MODULES", "").split(",")
                              if m.strip()]
    values["TASK_MODULES"] = ",".join(dict.fromkeys(m.strip() for m in modules))
    for module in values["TASK_MODULES"].split(","):
        try:
            importlib.import_module(module)
        except Exception:  # (serve imports it again and says why, in one line)
            pass
    for name, definition in registered().items():
        if not getattr(definition.fn, "closes_connections", False):
            wrap(name, tasks.closing)
    return values


def discovered() -> list[str]:
    """Each installed app's `tasks` module, as Django's autodiscovery finds them."""
    return [f"{app.name}.tasks" for app in apps.get_app_configs()
            if module_has_submodule(app.module, "tasks")]


def database_url(alias: str) -> str:
    """The libpq connection string of DATABASES[alias]."""
    from psycopg2.extensions import make_dsn

    try:
        entry = settings.DATABASES[alias]
    except KeyError:
        raise ConfigurationError(f"settings.DATABASES has no {alias!r} entry "
                                 "(TASKWORKER['DATABASE'] names it)") from None
    if "postgresql" not in entry.get("ENGINE", "") and "postgis" not in entry.get("ENGINE", ""):
        raise ConfigurationError(f"settings.DATABASES[{alias!r}] is not PostgreSQL "
                                 f"({entry.get('ENGINE')}): taskworker needs PostgreSQL")
    params = {"dbname": entry.get("NAME"), "user": entry.get("USER"),
              "password": entry.get("PASSWORD"), "host": entry.get("HOST"),
              "port": entry.get("PORT")}
    params.update({k: v for k, v in (entry.get("OPTIONS") or {}).items() if k not in NOT_LIBPQ})
    return str(make_dsn(**{k: str(v) for k, v in params.items() if v not in (None, "")}))


def text(value: object) -> str:
    """A setting's value as its variable would hold it: lists joined by commas."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
