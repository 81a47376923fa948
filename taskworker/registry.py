"""Named tasks: `@taskworker.task(...)` registers a function under a name.

    import taskworker

    @taskworker.task("resize", queue="images", max_retries=3, retry_backoff="10s")
    def resize(payload, task):
        ...

A row whose `task` column names a registered function runs that function; a row
with no name runs the default handler (TASK_HANDLER). Every option is optional
and, where a global setting exists (MAX_RETRIES, RETRY_BACKOFF, TASK_TIMEOUT),
overrides it for this task only. `queue` and `priority` are what `enqueue` fills
in when the caller does not say (see client.enqueue).

Registering happens at import: `serve --tasks myapp.tasks` (TASK_MODULES) imports
the modules, and the process then claims only tasks whose names it knows.

This module imports neither gevent nor the database driver: an application
imports it to declare its tasks, whatever else it runs on.
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .settings import parse_duration

DEFAULT_QUEUE = "default"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")  # names and queues


class RegistryError(Exception):
    """A task cannot be registered or a module not imported; str() is one line."""


@dataclass(frozen=True)
class TaskDef:
    """One registered task and its options (None: the global setting applies)."""

    name: str
    fn: Callable[..., Any]
    takes_task: bool  # called as fn(payload, task=TaskContext)
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = None
    retry_backoff: float | None = None  # seconds
    timeout: float | None = None  # seconds; 0: no limit
    max_running: int | None = None  # across every process and host
    cron: str | None = None  # 5-field cron expression (CRON_TZ, default UTC)
    every: float | None = None  # seconds between periodic runs
    payload: str | None = None  # what a periodic run gets
    skip_if_running: bool = True  # periodic: skip a tick while the last run is live

    @property
    def periodic(self) -> bool:
        return self.cron is not None or self.every is not None

    @property
    def schedule(self) -> str | None:
        """The schedule as text ("cron */5 * * * *", "every 30s"), or None."""
        if self.cron is not None:
            return f"cron {self.cron}"
        if self.every is not None:
            return f"every {self.every:.15g}s"
        return None


_registry: dict[str, TaskDef] = {}


def task(name: str | None = None, *, queue: str | None = None, priority: int | None = None,
         max_retries: int | None = None, retry_backoff: str | float | None = None,
         timeout: str | float | None = None, max_running: int | None = None,
         cron: str | None = None, every: str | float | None = None,
         payload: str | None = None, skip_if_running: bool = True,
         ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a named task (default name:
    `module.function`). Durations take 10, "10s", "500ms", "2m", "1h". The
    function is returned unchanged, with its name as `fn.task_name`."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name if name is not None else f"{fn.__module__}.{fn.__qualname__}"
        where = f"task {task_name!r}"
        _check_name(task_name, "task name")
        if queue is not None:
            _check_name(queue, f"{where}: queue")
        if priority is not None and not isinstance(priority, int):
            raise RegistryError(f"{where}: priority must be an integer")
        for label, value in (("max_retries", max_retries), ("max_running", max_running)):
            if value is not None and (not isinstance(value, int) or value < 0
                                      or (label == "max_running" and value < 1)):
                raise RegistryError(f"{where}: {label} must be an integer "
                                    f"{'of 1 or more' if label == 'max_running' else '>= 0'}")
        if cron is not None and every is not None:
            raise RegistryError(f"{where}: give cron or every, not both")
        if cron is not None:
            _check_cron(cron, where)
        if payload is not None and not isinstance(payload, str):
            raise RegistryError(f"{where}: payload must be str")
        definition = TaskDef(
            name=task_name, fn=fn, takes_task=takes_task(fn), queue=queue, priority=priority,
            max_retries=max_retries, retry_backoff=_seconds(retry_backoff, where, "retry_backoff"),
            timeout=_seconds(timeout, where, "timeout"), max_running=max_running, cron=cron,
            every=_seconds(every, where, "every"), payload=payload,
            skip_if_running=skip_if_running)
        if definition.every is not None and definition.every <= 0:
            raise RegistryError(f"{where}: every must be more than 0 seconds")
        known = _registry.get(task_name)
        if known is not None and known.fn is not fn and _origin(known.fn) != _origin(fn):
            raise RegistryError(f"{where} is registered twice: by {_origin(known.fn)} "
                                f"and by {_origin(fn)}")
        _registry[task_name] = definition
        fn.task_name = task_name  # type: ignore[attr-defined]
        return fn

    return register


def get(name: str) -> TaskDef | None:
    """The task registered under `name` in this process, or None."""
    return _registry.get(name)


def registered() -> dict[str, TaskDef]:
    """Every task registered in this process, by name."""
    return dict(_registry)


def import_modules(modules: Iterable[str]) -> list[str]:
    """Import the modules that register tasks (TASK_MODULES); return the names of
    the tasks registered after it. Raises RegistryError naming the module."""
    for module in modules:
        try:
            importlib.import_module(module)
        except RegistryError as exc:
            raise RegistryError(f"cannot load TASK_MODULES module {module!r}: {exc}") from None
        except Exception as exc:  # ImportError, or the module's own error
            raise RegistryError(f"cannot load TASK_MODULES module {module!r}: "
                                f"{type(exc).__name__}: {exc}") from None
    return sorted(_registry)


def takes_task(fn: Callable[..., Any]) -> bool:
    """Does `fn` accept a `task` keyword (or **kwargs)?"""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return "task" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_name(value: str, label: str) -> None:
    """Raise ValueError unless `value` is a usable task or queue name."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(f"{label} {value!r} is not a valid name: 1-200 characters of "
                         "letters, digits and _ . : - (not starting with . : -)")


def _check_name(value: str, label: str) -> None:
    try:
        check_name(value, label)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


def _check_cron(expression: str, where: str) -> None:
    from croniter import croniter  # (only a process with periodic tasks needs it)

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise RegistryError(f"{where}: cron {expression!r} is not a valid 5-field "
                            "cron expression")


def _seconds(value: str | float | None, where: str, label: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise RegistryError(f"{where}: {label} {value!r}: {exc}") from None
    else:
        raise RegistryError(f"{where}: {label} must be a duration such as 10, '10s' or '2m'")
    if seconds < 0:
        raise RegistryError(f"{where}: {label} must not be negative")
    return seconds


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
