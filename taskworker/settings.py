"""The one place configuration is read and validated.

`load()` turns the environment (plus `.env` and command-line overrides, which the
CLI merges in) into one frozen `Settings`. Every bad value stops here with a
`SettingsError` naming the variable and the value, so the rest of the code can
trust what it is given.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .masking import mask_password, mask_secrets
from .parsers import MAX_WORKERS
from .parsers import byte_size as _bytes
from .parsers import host as _host
from .parsers import hosts as _hosts
from .parsers import modules as _modules
from .parsers import queues as _queues
from .parsers import secret as _secret
from .parsers import task_names as _task_names
from .parsers import time_zone as _time_zone
from .parsers import user_name as _user

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024  # 1 MB: a claim's or a completion's batch stays small
DEMO_HANDLER = "taskworker.handlers:demo"
DEFAULT_DASHBOARD_PORT = 8080  # `dashboard` and `serve --dashboard` without DASHBOARD_PORT
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/taskprocessor?sslmode=disable"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("plain", "json")
MAX_DURATION = 3650 * 86400.0  # 10 years: the longest duration of any setting or option


T = TypeVar("T")


class SettingsError(Exception):
    """A configuration value is unusable; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Settings:
    database_url: str  # libpq URL or key=value string; never logged unmasked
    worker_count: int = 5  # worker greenlets in the pool
    fetch_interval: float = 5.0  # seconds between fetches when there is nothing to do
    fetch_limit: int | None = None  # most tasks one claim takes; None: sized per claim
    task_min_seconds: float = 1.0  # demo handler: shortest simulated work
    task_max_seconds: float = 4.0  # demo handler: longest simulated work
    task_failure_rate: float = 0.1  # demo handler: share of tasks that fail
    task_handler: str | None = None  # runs tasks without a name: see default_handler
    task_modules: tuple[str, ...] = ()  # modules imported to register named tasks
    queues: tuple[tuple[str, int | None], ...] | None = None  # served, with caps; None: all
    cron_tz: str = "UTC"  # time zone of periodic tasks' cron expressions
    log_level: str = "INFO"
    log_format: str = "plain"  # plain (the original's lines) or json
    lease_seconds: float = 30.0  # how long a claim holds a task without a heartbeat
    max_retries: int = 0  # handler failures re-queued before the task ends in error
    retry_backoff: float = 5.0  # base of the exponential retry delay, seconds
    max_rescues: int = 3  # times a task may lose its worker before it is parked
    task_timeout: float = 300.0  # seconds a handler may run; 0 = no limit
    shutdown_timeout: float = 30.0  # seconds running tasks get to finish on Ctrl+C
    statement_timeout: float = 10.0  # server-side bound on every query, seconds
    connect_timeout: float = 10.0  # bound on one connection attempt, seconds
    listen: bool = True  # wake on LISTEN/NOTIFY (false for PgBouncer transaction mode)
    listen_database_url: str | None = None  # LISTEN alone connects here (None: DATABASE_URL)
    metrics_port: int | None = None  # serve /metrics and /healthz on this port; None = off
    metrics_host: str = "127.0.0.1"  # address the metrics server binds (0.0.0.0: all)
    health_max_downtime: float = 30.0  # /healthz fails once a connection is down this long
    prune_after: float | None = None  # serve deletes finished tasks older than this; None = off
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # largest payload or result, bytes
    transaction_pool_size: int = 10  # connections for tasks' bound transactions (part 21)
    dashboard_host: str = "127.0.0.1"  # address the dashboard listens on
    dashboard_port: int | None = None  # `dashboard`: 8080 when None; serve: off when None
    dashboard_user: str = "admin"  # the user name of HTTP basic auth
    # HTTP basic auth's password, and a bearer token (None: off); never in a repr
    dashboard_password: str | None = dataclasses.field(default=None, repr=False)
    dashboard_token: str | None = dataclasses.field(default=None, repr=False)
    dashboard_readonly: bool = False  # hide every action, refuse every POST
    # host names the dashboard answers besides the loopback ones and its own address
    dashboard_hosts: tuple[str, ...] = ()
    # tasks whose arguments (and text payload) the dashboard never shows nor
    # searches: task names, or ("*",) for every task
    dashboard_hide_arguments: tuple[str, ...] = ()

    @property
    def default_handler(self) -> str | None:
        """What runs tasks without a name: TASK_HANDLER, else the demo unless
        TASK_MODULES is set (then such tasks are left for a process that has one)."""
        if self.task_handler is not None:
            return self.task_handler
        return None if self.task_modules else DEMO_HANDLER

    @property
    def queue_names(self) -> tuple[str, ...] | None:
        """The queues served (None: every queue)."""
        return None if self.queues is None else tuple(name for name, _ in self.queues)

    def hides_arguments(self, task: str | None) -> bool:
        """Does the dashboard hide the argument values of the task named `task`
        (None: a task without a name)? DASHBOARD_HIDE_ARGUMENTS."""
        hidden = self.dashboard_hide_arguments
        return "*" in hidden or (task is not None and task in hidden)

    @property
    def safe_database_url(self) -> str:
        """The database URL with its password masked, for logs."""
        return mask_password(self.database_url)


# --- parsers: each takes the raw string and returns the value or raises ValueError


def _duration(raw: str) -> float:
    """Seconds from `5`, `5s`, `1.5`, `500ms`, `2m`, `1h`, `7d`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*", raw)
    if not m:
        raise ValueError("expected a duration such as 5, 5s, 1.5 or 500ms")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    value = float(m.group(1)) * scale
    if value > MAX_DURATION:  # (a timer that long overflows, or never fires: "9" * 400)
        raise ValueError(f"must be at most {MAX_DURATION / 86400:g}d (10 years)")
    return value


def parse_duration(raw: str) -> float:
    """Public form of the duration parser, for CLI options such as --older-than."""
    return _duration(raw)


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(options: tuple[str, ...], upper: bool) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return value

    return parse


def _handler_path(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", raw.strip()):
        raise ValueError("expected package.module:function")
    return raw.strip()


def _database_url(raw: str) -> str:
    from psycopg2.extensions import parse_dsn  # no sockets: safe before patching

    try:
        parse_dsn(raw)
    except Exception as exc:  # psycopg2 raises ProgrammingError with libpq's text
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparseable"
        reason = mask_secrets(reason, raw)  # libpq quotes pieces of the string
        raise ValueError(f"not a PostgreSQL connection string ({reason})") from None
    if "=" not in raw and "://" not in raw:
        raise ValueError("not a PostgreSQL connection string")
    return raw


def _at_least(minimum: float, parse: Callable[[str], T]) -> Callable[[str], T]:
    def check(raw: str) -> T:
        value = parse(raw)
        if value < minimum:  # type: ignore[operator]
            raise ValueError(f"must be at least {minimum:g}")
        return value

    return check


def _above_zero(parse: Callable[[str], T]) -> Callable[[str], T]:
    def check(raw: str) -> T:
        value = parse(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError("must be greater than 0")
        return value

    return check


def _between(low: int, high: int, parse: Callable[[str], int]) -> Callable[[str], int]:
    def check(raw: str) -> int:
        value = parse(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:,} and {high:,}")
        return value

    return check


def _statement_timeout(raw: str) -> float:
    """PostgreSQL takes at most 2,147,483,647 ms (24.8 days), and so does the TCP
    user timeout libpq is given (STATEMENT_TIMEOUT plus 5 s)."""
    value = _above_zero(_duration)(raw)
    if value > 24 * 86400:
        raise ValueError("must be at most 24d")
    return value


def _port(raw: str) -> int:
    value = _int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("expected a TCP port between 1 and 65535")
    return value






def _fraction(raw: str) -> float:
    value = _float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


# Environment variable -> (Settings field, parser).
FIELDS: dict[str, tuple[str, Callable[[str], object]]] = {
    "DATABASE_URL": ("database_url", _database_url),
    "WORKER_COUNT": ("worker_count", _between(1, MAX_WORKERS, _int)),
    "FETCH_INTERVAL": ("fetch_interval", _above_zero(_duration)),
    "FETCH_LIMIT": ("fetch_limit", _at_least(1, _int)),
    "TASK_MIN_SECONDS": ("task_min_seconds", _at_least(0, _duration)),
    "TASK_MAX_SECONDS": ("task_max_seconds", _at_least(0, _duration)),
    "TASK_FAILURE_RATE": ("task_failure_rate", _fraction),
    "TASK_HANDLER": ("task_handler", _handler_path),
    "TASK_MODULES": ("task_modules", _modules),
    "QUEUES": ("queues", _queues),
    "CRON_TZ": ("cron_tz", _time_zone),
    "LOG_LEVEL": ("log_level", _choice(LOG_LEVELS, upper=True)),
    "LOG_FORMAT": ("log_format", _choice(LOG_FORMATS, upper=False)),
    "LEASE_SECONDS": ("lease_seconds", _at_least(1, _duration)),
    "MAX_RETRIES": ("max_retries", _at_least(0, _int)),
    "RETRY_BACKOFF": ("retry_backoff", _at_least(0, _duration)),
    "MAX_RESCUES": ("max_rescues", _at_least(0, _int)),
    "TASK_TIMEOUT": ("task_timeout", _at_least(0, _duration)),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _at_least(0, _duration)),
    "STATEMENT_TIMEOUT": ("statement_timeout", _statement_timeout),
    "CONNECT_TIMEOUT": ("connect_timeout", _above_zero(_duration)),
    "LISTEN": ("listen", _bool),
    "LISTEN_DATABASE_URL": ("listen_database_url", _database_url),
    "METRICS_PORT": ("metrics_port", _port),
    "METRICS_HOST": ("metrics_host", _host),
    "HEALTH_MAX_DOWNTIME": ("health_max_downtime", _above_zero(_duration)),
    "PRUNE_AFTER": ("prune_after", _above_zero(_duration)),
    # At most 1 GB: PostgreSQL's own limit for one text value.
    "MAX_PAYLOAD_BYTES": ("max_payload_bytes", _between(1, 1024**3, _bytes)),
    "TRANSACTION_POOL_SIZE": ("transaction_pool_size", _between(1, MAX_WORKERS, _int)),
    "DASHBOARD_HOST": ("dashboard_host", _host),
    "DASHBOARD_PORT": ("dashboard_port", _port),
    "DASHBOARD_USER": ("dashboard_user", _user),
    "DASHBOARD_PASSWORD": ("dashboard_password", _secret),
    "DASHBOARD_TOKEN": ("dashboard_token", _secret),
    "DASHBOARD_READONLY": ("dashboard_readonly", _bool),
    "DASHBOARD_HOSTS": ("dashboard_hosts", _hosts),
    "DASHBOARD_HIDE_ARGUMENTS": ("dashboard_hide_arguments", _task_names),
}
SECRETS = ("DASHBOARD_PASSWORD", "DASHBOARD_TOKEN")  # never shown, even when invalid

# What each variable means: the settings reference of the documentation
# (docs/reference/settings.md) is rendered from FIELDS, these, the defaults of
# Settings and the options of serve and dashboard (docs/hooks.py), so it cannot
# drift. Markdown, with links relative to that page. The second variable of a pair
# documented together (TASK_MIN_SECONDS / TASK_MAX_SECONDS) has an empty string.
MEANINGS: dict[str, str] = {
    "DATABASE_URL": (
        "libpq URL (one host or several) or `key=value` string; the password is never shown "
        "(see [Logs](../reference/logs.md))"
    ),
    "WORKER_COUNT": (
        "worker greenlets processing tasks in parallel, at most 100,000 (each costs about 9 "
        "KB: 100,000 take 900 MB)"
    ),
    "FETCH_INTERVAL": "poll interval when idle (NOTIFY wakes the fetcher sooner)",
    "FETCH_LIMIT": (
        "most tasks taken by one claim, a hard cap; none: each claim takes the idle workers "
        "plus what they finish in 50 ms at the measured task rate, at most 1,000 (see "
        "[Speed](../explanation/speed.md))"
    ),
    "TASK_HANDLER": (
        "`module:function` run for each task without a name; when not set, the demo "
        "(`taskworker.handlers:demo`), unless `TASK_MODULES` is set: then none, and such "
        "tasks wait for a process that has one"
    ),
    "TASK_MODULES": (
        "modules to import that register named tasks (`myapp.tasks,myapp.mail`), see [Named "
        "tasks and queues](../how-to/tasks-and-queues.md)"
    ),
    "QUEUES": (
        "queues to serve (none: every queue); `images:5,default` also runs at most 5 of "
        "`images`' tasks at once in this process (a cap is at most 100,000)"
    ),
    "TASK_MIN_SECONDS": "demo handler: simulated work time (min must not exceed max)",
    "TASK_MAX_SECONDS": "",
    "CRON_TZ": (
        "time zone of periodic tasks' cron expressions (`Europe/Berlin`), see [Periodic "
        "tasks](../how-to/periodic.md)"
    ),
    "TASK_FAILURE_RATE": "demo handler: share of tasks that fail (0 to 1)",
    "LEASE_SECONDS": "how long a claim holds a task without a heartbeat (at least 1 s)",
    "MAX_RETRIES": "handler failures retried before a task ends in `error`",
    "RETRY_BACKOFF": (
        "base of the exponential retry delay (doubling, capped at 1 h, then ±20% jitter)"
    ),
    "MAX_RESCUES": "times a task may lose its worker before it is parked in `error`",
    "TASK_TIMEOUT": "longest one run of a task; 0 = no limit",
    "SHUTDOWN_TIMEOUT": "time running tasks get to finish after Ctrl+C",
    "STATEMENT_TIMEOUT": (
        "server-side `statement_timeout` of taskworker's statements (at most `24d`, "
        "PostgreSQL's limit), sent with each one (`SET LOCAL`, so that it works through "
        "PgBouncer; `migrate` runs without one); `serve` also gives up on a statement "
        "unanswered 5 s past it (a partition)"
    ),
    "CONNECT_TIMEOUT": (
        "limit on one connection attempt; with several hosts in the URL, on each host in turn "
        "(see [Survive a failover](../how-to/hosts.md#survive-a-failover))"
    ),
    "LISTEN": (
        "wake on `LISTEN/NOTIFY`; behind PgBouncer in transaction mode set "
        "`LISTEN_DATABASE_URL`, or `false` to poll"
    ),
    "LISTEN_DATABASE_URL": (
        "a direct connection (past a pooler) for the listener alone; everything else uses "
        "`DATABASE_URL`"
    ),
    "LOG_LEVEL": "`DEBUG`, `INFO`, `WARNING`, `ERROR`",
    "LOG_FORMAT": "`plain` (the original's lines) or `json`",
    "METRICS_PORT": (
        "serve Prometheus `/metrics` and `/healthz` on this port (1-65535); one more "
        "connection"
    ),
    "METRICS_HOST": (
        "address the metrics server listens on; `0.0.0.0` (or `::`) for every interface"
    ),
    "HEALTH_MAX_DOWNTIME": (
        "`/healthz` fails once a database connection has been down this long, or lost 5 times "
        "within it"
    ),
    "PRUNE_AFTER": (
        "`serve` deletes finished tasks last changed longer ago than this (`7d`), see `prune` "
        "under [Commands](../reference/commands.md); one more connection"
    ),
    "TRANSACTION_POOL_SIZE": (
        "connections for tasks' bound transactions (`taskworker.transaction()`), opened on "
        "first use and kept; a task that asks while all are in use waits for one"
    ),
    "MAX_PAYLOAD_BYTES": (
        "largest payload or result in bytes (1 MB; `512kB`, `1MB`, at most `1GB`): `enqueue` "
        "refuses a larger payload, a claim ends such a task in `error` unrun, a larger result "
        "fails its task"
    ),
    "DASHBOARD_HOST": (
        "address the [dashboard](../how-to/dashboard.md) listens on; any address but a "
        "loopback one needs `DASHBOARD_PASSWORD` or `DASHBOARD_TOKEN` (else exit code 2)"
    ),
    "DASHBOARD_PORT": (
        "port of the dashboard: `taskworker dashboard` uses 8080 when it is not set; set for "
        "`serve` (or `serve --dashboard`, 8080 by default), serve runs the dashboard too"
    ),
    "DASHBOARD_PASSWORD": (
        "HTTP basic auth on every page of the dashboard; never logged or shown"
    ),
    "DASHBOARD_USER": "the user name that goes with `DASHBOARD_PASSWORD`",
    "DASHBOARD_TOKEN": (
        "a token for the dashboard: `Authorization: Bearer TOKEN`, or `/?token=TOKEN` opened "
        "once in a browser (sets a session cookie)"
    ),
    "DASHBOARD_READONLY": "`true`: the dashboard shows no action and refuses every POST",
    "DASHBOARD_HOSTS": (
        "host names the [dashboard](../how-to/dashboard.md) answers besides `localhost`, the "
        "loopback addresses and the address it listens on (`tasks.example.com,10.0.0.5`; any "
        "port): the names a browser or a proxy sends in `Host`"
    ),
    "DASHBOARD_HIDE_ARGUMENTS": (
        "task names (`send_email,billing.charge`), or `*` for every task, whose argument "
        "values (and text payload) the [dashboard](../how-to/dashboard.md) never shows nor "
        "searches: it shows each argument's position or name with `hidden "
        "(DASHBOARD_HIDE_ARGUMENTS)`"
    ),
}


def load(env: Mapping[str, str], overrides: Mapping[str, str | None] = {}) -> Settings:
    """Build the Settings from `env`, with `overrides` (CLI options) winning.

    Both map environment-variable names to raw strings; a None override is ignored.
    """
    merged = dict(env)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    values: dict[str, object] = {"database_url": DEFAULT_DATABASE_URL}
    for var, (field, parse) in FIELDS.items():
        raw = merged.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            shown = mask_password(raw) if var.endswith("DATABASE_URL") else raw
            if var in SECRETS:
                raise SettingsError(f"invalid {var}: {exc}") from None
            raise SettingsError(f"invalid {var}={shown!r}: {exc}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.task_min_seconds > settings.task_max_seconds:
        raise SettingsError(
            f"invalid TASK_MIN_SECONDS={settings.task_min_seconds:g}: "
            f"must not exceed TASK_MAX_SECONDS={settings.task_max_seconds:g}"
        )
    return settings
