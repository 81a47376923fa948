"""Named tasks: `@taskworker.task(...)` registers a function under a name.

    import taskworker

    @taskworker.task(queue="mail", max_retries=3, retry_backoff="10s")
    def send_email(to: str, subject: str = "") -> dict:
        ...

    send_email.enqueue(conn, "ann@example.com", subject="Hi")   # in conn's transaction
    send_email.options(priority=5, delay=60).enqueue(conn, "bob@example.com")
    send_email("ann@example.com")                               # a plain call, as before

The decorator returns a `Task`: called, it runs the function; `.enqueue` checks
the arguments against the function's signature and against what JSON can carry
(codec.py), then inserts a row whose `arguments` hold the call. A worker calls
the function with them and stores its return value as JSON. Rows written with a
text payload (`taskworker.enqueue(conn, "text", task=send_email)`, plain SQL,
the seed) still call the function with the payload, as before part 14.

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

import dataclasses
import functools
import importlib
import inspect
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

from . import codec
from .handlers import coroutine_refusal
from .settings import parse_duration

if TYPE_CHECKING:
    from .workflows import Signature

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
    rate_limit: RateLimit | None = None  # starts per window, across every process and host
    max_running_per_key: int | None = None  # running per concurrency_key, across processes
    cron: str | None = None  # 5-field cron expression (CRON_TZ, default UTC)
    every: float | None = None  # seconds between periodic runs
    payload: str | None = None  # what a periodic run gets (a text payload), or
    arguments: str | None = None  # ... the JSON call it is made with (format 2)
    skip_if_running: bool = True  # periodic: skip a tick while the last run is live
    signature: inspect.Signature | None = field(default=None, compare=False, repr=False)

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


P = ParamSpec("P")
R = TypeVar("R")


def task(name: str | None = None, *, queue: str | None = None, priority: int | None = None,
         max_retries: int | None = None, retry_backoff: str | float | None = None,
         timeout: str | float | None = None, max_running: int | None = None,
         rate_limit: str | None = None, max_running_per_key: int | None = None,
         cron: str | None = None, every: str | float | None = None,
         payload: str | None = None, args: Sequence[Any] | None = None,
         kwargs: dict[str, Any] | None = None, skip_if_running: bool = True,
         ) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Register the decorated function as a named task (default name:
    `module.function`) and return it as a `Task`. Durations take 10, "10s",
    "500ms", "2m", "1h". A periodic task (`cron` or `every`) is called with
    `args` and `kwargs` (checked here against its signature), or with the text
    `payload` as one argument; with neither, it is called with no argument if
    its signature allows, else with None (as before part 14). `rate_limit`
    ("100/m": per second, minute or hour) caps its starts in any such window
    across every process; `max_running_per_key` caps how many of its calls
    enqueued with one `concurrency_key` run at once."""

    def register(fn: Callable[P, R]) -> Task[P, R]:
        if isinstance(fn, Task):
            fn = fn.fn
        task_name = name if name is not None else f"{fn.__module__}.{fn.__qualname__}"
        where = f"task {task_name!r}"
        _check_name(task_name, "task name")
        if (why := coroutine_refusal(fn)) is not None:
            raise RegistryError(f"{where} {why}")
        if queue is not None:
            _check_name(queue, f"{where}: queue")
        if priority is not None and not isinstance(priority, int):
            raise RegistryError(f"{where}: priority must be an integer")
        for label, value, least in (("max_retries", max_retries, 0),
                                    ("max_running", max_running, 1),
                                    ("max_running_per_key", max_running_per_key, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < least):
                raise RegistryError(f"{where}: {label} must be an integer "
                                    f"{'of 1 or more' if least else '>= 0'}")
        rate = None if rate_limit is None else _rate(rate_limit, where)
        if cron is not None and every is not None:
            raise RegistryError(f"{where}: give cron or every, not both")
        if cron is not None:
            _check_cron(cron, where)
        if payload is not None and not isinstance(payload, str):
            raise RegistryError(f"{where}: payload must be str")
        signature = _signature(fn)
        arguments = _periodic_call(fn, signature, payload, args, kwargs, where)
        definition = TaskDef(
            name=task_name, fn=fn, takes_task=takes_task(fn), queue=queue, priority=priority,
            max_retries=max_retries, retry_backoff=_seconds(retry_backoff, where, "retry_backoff"),
            timeout=_seconds(timeout, where, "timeout"), max_running=max_running,
            rate_limit=rate, max_running_per_key=max_running_per_key, cron=cron,
            every=_seconds(every, where, "every"), payload=payload, arguments=arguments,
            skip_if_running=skip_if_running, signature=signature)
        if definition.every is not None and definition.every <= 0:
            raise RegistryError(f"{where}: every must be more than 0 seconds")
        known = _registry.get(task_name)
        if known is not None and known.fn is not fn and _origin(known.fn) != _origin(fn):
            raise RegistryError(f"{where} is registered twice: by {_origin(known.fn)} "
                                f"and by {_origin(fn)}")
        _registry[task_name] = definition
        return Task(task_name, fn)

    return register


@dataclass(frozen=True)
class Options:
    """Where and when an enqueued call goes (None: the task's own option, else
    the default): see `taskworker.enqueue` for each."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | timedelta | None = None
    delay: timedelta | float | None = None
    unique_key: str | None = None
    concurrency_key: str | None = None


NO_OPTIONS = Options()


class Task(Generic[P, R]):
    """A registered task: call it to run the function here, `.enqueue` it to
    have a worker run it. Type checkers see the function's own parameters on
    both."""

    def __init__(self, name: str, fn: Callable[P, R], options: Options = NO_OPTIONS) -> None:
        self.task_name = name  # (what `taskworker.enqueue(..., task=this)` reads)
        self.fn = fn
        self._options = options
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.task_name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<taskworker.Task {self.task_name!r}>"

    def enqueue(self, conn: Any, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Insert a pending task that calls the function with these arguments,
        in the transaction of `conn` (psycopg2's or psycopg 3's connection or
        cursor, SQLAlchemy's Connection or Session, Django's connection); return
        its id. Raises TypeError before anything is sent when the signature
        refuses the call or JSON cannot carry an argument."""
        from .client import enqueue_call

        return enqueue_call(conn, self.task_name, args, kwargs, self._options)

    async def enqueue_async(self, conn: Any, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """`enqueue` in the transaction of an asynchronous connection (psycopg 3's
        AsyncConnection, SQLAlchemy's AsyncConnection or AsyncSession, asyncpg's:
        see taskworker.enqueue_async)."""
        from .client import enqueue_call_async

        return await enqueue_call_async(conn, self.task_name, args, kwargs, self._options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This call, not made yet, for a workflow (`taskworker.chain`,
        `taskworker.group`), with this task's options. In a chain after
        another step, the step's result comes first, before `args`."""
        from .workflows import Signature

        return Signature(self.task_name, tuple(args), dict(kwargs), self._options)

    def options(self, *, queue: str | None = None, priority: int | None = None,
                run_at: datetime | timedelta | None = None,
                delay: timedelta | float | None = None,
                unique_key: str | None = None,
                concurrency_key: str | None = None) -> Task[P, R]:
        """This task with options for the next `.enqueue`: a queue, a priority,
        a time (`run_at`, or `delay` in seconds or a timedelta), a unique key
        (while a task with that key is live, `.enqueue` inserts nothing and
        returns the live task's id) or a concurrency key (at most the task's
        max_running_per_key calls with that key run at once)."""
        was = self._options
        return Task(self.task_name, self.fn, Options(
            was.queue if queue is None else queue,
            was.priority if priority is None else priority,
            was.run_at if run_at is None and delay is None else run_at,
            was.delay if run_at is None and delay is None else delay,
            was.unique_key if unique_key is None else unique_key,
            was.concurrency_key if concurrency_key is None else concurrency_key))


def check_call(definition: TaskDef, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise TypeError unless the task's function takes these arguments."""
    if definition.signature is None:
        return
    try:
        definition.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{definition.name}(): {exc}") from None


def call(fn: Callable[..., Any], signature: inspect.Signature | None, name: str | None,
         arguments: str) -> tuple[str, str | None]:
    """Call a format 2 task's function with a row's `arguments` (its JSON call):
    (its return value as JSON, or why the call could not be made or its value
    stored). A call the function does not take raises Fail (a deploy changed
    the signature: retrying cannot fix it); an error raised inside the function
    is raised. What a worker and the eager test mode both run."""
    from .endings import Fail

    try:
        args, kwargs = codec.decode_call(arguments)
    except ValueError as exc:  # (json.JSONDecodeError is one)
        return "", f"ValueError: cannot read the task's arguments: {exc}"
    try:
        value = fn(*args, **kwargs)
    except TypeError as exc:
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as refused:
                raise Fail(f"TypeError: the arguments do not fit {name}{signature}: "
                           f"{refused}") from exc
        raise
    try:
        return codec.encode(value, f"the return value of {name}()"), None
    except codec.NotJSON as exc:
        return "", f"TypeError: {exc}"


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature
        return None


def _periodic_call(fn: Callable[..., Any], signature: inspect.Signature | None,
                   payload: str | None, args: Sequence[Any] | None,
                   kwargs: dict[str, Any] | None, where: str) -> str | None:
    """The JSON call a periodic run is made with (None: called with `payload`)."""
    if args is None and kwargs is None:
        if payload is not None or signature is None:
            return None
        try:  # a function of no required parameter: called with none
            signature.bind()
        except TypeError:
            return None  # `def tick(payload)`: called with None, as before part 14
        return codec.encode_call((), {}, where)
    if payload is not None:
        raise RegistryError(f"{where}: give payload or args/kwargs, not both")
    if args is not None and not isinstance(args, (list, tuple)):
        raise RegistryError(f"{where}: args must be a list")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RegistryError(f"{where}: kwargs must be a dict")
    try:
        if signature is not None:
            signature.bind(*(args or ()), **(kwargs or {}))
        return codec.encode_call(args or (), kwargs or {}, where)
    except TypeError as exc:  # (NotJSON is one)
        raise RegistryError(f"{where}: {exc}") from None


def get(name: str) -> TaskDef | None:
    """The task registered under `name` in this process, or None."""
    return _registry.get(name)


def wrap(name: str, around: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Run `around(fn)` for the registered task `name` instead of its function
    `fn`, its name, options and signature kept: how an integration runs code
    around every task (the Django one closes the ORM's connections after each)."""
    definition = _registry[name]
    _registry[name] = dataclasses.replace(definition, fn=around(definition.fn))


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
                                f"{type(exc).__name__}: {exc}{raised_at(exc)}") from None
    return sorted(_registry)


def raised_at(exc: BaseException) -> str:
    """" (raised at file:line)" for the frame that raised `exc`, outside the
    import machinery; a SyntaxError names its own file and line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename and not f.filename.startswith("<frozen")]
    if not frames or frames[-1].filename == __file__:
        return ""
    return f" (raised at {frames[-1].filename}:{frames[-1].lineno})"


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


class RateLimit(NamedTuple):
    """`starts` at most in any window of `per` seconds."""

    starts: int
    per: float

    def __str__(self) -> str:
        unit = RATE_UNITS_SHOWN.get(self.per)
        return f"{self.starts}/{unit}" if unit else f"{self.starts} per {self.per:g}s"


RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
              "h": 3600.0, "hour": 3600.0}
RATE_UNITS_SHOWN = {1.0: "s", 60.0: "m", 3600.0: "h"}
MAX_RATE_COUNT = 100_000  # one token row per start a window allows


def _rate(value: object, where: str) -> RateLimit:
    """"100/m" as RateLimit(100, 60.0)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", value) \
        if isinstance(value, str) else None
    if match is None or match[2] not in RATE_UNITS or not 1 <= int(match[1]) <= MAX_RATE_COUNT:
        raise RegistryError(f"{where}: rate_limit {value!r}: give starts per second, minute "
                            f"or hour, such as '10/s', '100/m' or '1000/h' "
                            f"(1 to {MAX_RATE_COUNT:,} starts)")
    return RateLimit(int(match[1]), RATE_UNITS[match[2]])


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
