"""Settings of the djangoshop example: one app (orders), PostgreSQL from
DATABASE_URL, and taskworker as the Tasks backend."""
import os
from urllib.parse import unquote, urlsplit

import django

SECRET_KEY = "djangoshop-example-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["orders", "taskworker.django"]
if django.VERSION < (6, 0):  # Django's Tasks framework before Django 6: the backport
    INSTALLED_APPS.append("django_tasks")

_url = urlsplit(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/shop"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": _url.port or "",
        "CONN_MAX_AGE": 0,  # (Django's default: closed at the end of each request or task)
        "OPTIONS": {"application_name": "djangoshop"},
    }
}

TASKS = {
    "default": {
        "BACKEND": "taskworker.django.backend.TaskworkerBackend",
        "QUEUES": ["default", "orders"],
    }
}

# taskworker's settings (any variable of `manage.py taskworker serve --help`);
# the environment wins over them.
TASKWORKER = {
    "WORKER_COUNT": 10,
    "FETCH_INTERVAL": "1s",
}
