"""The app `taskworker.django` (label `taskworker`): it holds the management
command; it has no models (the schema is taskworker's own migrations:
`python manage.py taskworker migrate`)."""
from __future__ import annotations

from django.apps import AppConfig


class TaskworkerConfig(AppConfig):
    name = "taskworker.django"
    label = "taskworker"
    verbose_name = "taskworker"
