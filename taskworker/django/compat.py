"""Django's Tasks framework, wherever it is installed: `django.tasks` (Django 6
and later), else the `django-tasks` backport (`django_tasks`, for Django 4.2 to
5.2). The two have the same names: this module hands out the one present."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def _package() -> str:
    try:
        if importlib.util.find_spec("django.tasks") is not None:
            return "django.tasks"
    except ImportError:
        pass
    return "django_tasks"


PACKAGE = _package()


def module(name: str = "") -> Any:
    """`django.tasks` (or `django_tasks`), or one of its modules: module("base")."""
    return importlib.import_module(f"{PACKAGE}.{name}" if name else PACKAGE)
