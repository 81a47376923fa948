"""TaskworkerBackend: Django's Tasks framework enqueueing taskworker rows.

    TASKS = {"default": {
        "BACKEND": "taskworker.django.backend.TaskworkerBackend",
        "QUEUES": ["default", "mail"],      # optional: the queues tasks may name
        "OPTIONS": {"DATABASE": "default"},  # optional: the DATABASES alias
    }}

`task.enqueue(...)` inserts one row in the current transaction of that
database's connection (inside `transaction.atomic()`, the task exists only if
the block commits; in autocommit, at once) and returns a TaskResult whose id is
the task's id. Both ways:

    Django                      taskworker row
    task.module_path            task (the name the worker runs it by)
    args, kwargs                arguments (JSON; checked against the signature)
    queue_name, priority        queue, priority (-100..100, higher first)
    run_after                   run_at
    READY                       pending, or claimed and not started
    RUNNING                     in_progress, its handler started
    SUCCESSFUL, return_value    done, return_value
    FAILED, errors              error or cancelled, error and traceback

`get_result(id)` reads the row back; `refresh()` again. An error's
`exception_class_path` is the class its traceback names.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from ..client import enqueue_call
from ..registry import Options
from ..results import exception_type
from ..store import admin
from ..store.database import Direct
from . import tasks
from .compat import module

Base: Any = module("backends.base").BaseTaskBackend


class TaskworkerBackend(Base):  # type: ignore[misc]
    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = False  # the workers are greenlets: an async def is refused

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database = self.options.get("DATABASE", DEFAULT_DB_ALIAS)

    def validate_task(self, task: Any) -> None:
        """Django's checks, then the task registered for the worker (at
        `@task`, so that serve finds every task its apps define)."""
        super().validate_task(task)
        tasks.register(task)

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):  # (USE_TZ = False)
            run_at = timezone.make_aware(run_at)
        task_id = enqueue_call(self._connection(), task.module_path, list(args),
                               dict(kwargs), Options(queue=task.queue_name,
                                                     priority=task.priority, run_at=run_at))
        Status = module().TaskResultStatus
        result = module().TaskResult(
            task=task, id=str(task_id), status=Status.READY, enqueued_at=timezone.now(),
            started_at=None, finished_at=None, last_attempted_at=None, args=list(args),
            kwargs=dict(kwargs), backend=self.alias, errors=[], worker_ids=[])
        module("signals").task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        missing = module("exceptions").TaskResultDoesNotExist
        try:
            task_id = int(result_id)
        except (TypeError, ValueError):
            raise missing(result_id) from None
        row = admin.task(Direct(self._connection()), task_id)
        if row is None or row["task"] is None:
            raise missing(result_id)
        try:
            task = import_string(row["task"])
        except ImportError:
            raise missing(f"{result_id}: its task {row['task']!r} is not importable") from None
        if not hasattr(task, "func") or not hasattr(task, "get_backend"):
            raise missing(f"{result_id}: {row['task']!r} is not a Django task")
        return result_of(task, row, self.alias)

    def _connection(self) -> Any:
        """The DB-API connection under Django's, in whatever transaction Django
        has it in (statements on it join that transaction)."""
        connection = connections[self.database]
        connection.ensure_connection()
        return connection.connection


def result_of(task: Any, row: dict[str, Any], backend: str) -> Any:
    """The TaskResult a task's row says."""
    Status = module().TaskResultStatus
    status = {"pending": Status.READY, "done": Status.SUCCESSFUL, "error": Status.FAILED,
              "cancelled": Status.FAILED}.get(row["status"])
    if status is None:  # in_progress: running once its handler has started
        status = Status.RUNNING if row["started_at"] is not None else Status.READY
    errors = []
    if row["error"] is not None and row["status"] != "done":
        errors.append(module("base").TaskError(
            exception_class_path=exception_path(row["error"], row["traceback"]),
            traceback=row["traceback"] or row["error"]))
    call = json_value(row["arguments"]) or {}
    finished: datetime | None = row["updated_at"] if status in (
        Status.SUCCESSFUL, Status.FAILED) else None
    result = module().TaskResult(
        task=task, id=str(row["id"]), status=status, enqueued_at=row["created_at"],
        started_at=row["started_at"], finished_at=finished,
        last_attempted_at=row["started_at"], args=call.get("args", []),
        kwargs=call.get("kwargs", {}), backend=backend, errors=errors,
        worker_ids=[tasks.WORKER_ID] * row["attempts"])
    if status == Status.SUCCESSFUL:
        object.__setattr__(result, "_return_value", json_value(row["return_value"]))
    return result


def json_value(value: Any) -> Any:
    """A jsonb column's value: decoded by psycopg2, left as text by Django's
    loader on psycopg 3."""
    return json.loads(value) if isinstance(value, str) else value


def exception_path(error: str, traceback: str | None) -> str:
    """The import path of the exception a stored failure names (a builtin's:
    `builtins.ValueError`); a cancel, which raised nothing: taskworker's Cancel."""
    if error.startswith("cancelled"):
        return "taskworker.endings.Cancel"
    kind = exception_type(error, traceback)
    return kind if "." in kind else f"builtins.{kind}"
