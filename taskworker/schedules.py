"""When periodic tasks fall due: pure functions of a schedule, a time zone and now.

A schedule is `every` N seconds or a 5-field `cron` expression. Its ticks are the
instants it falls due, as aware UTC datetimes; a tick is what identifies a run
(taskworker_ticks is keyed by task and tick), so every process must compute the
same ticks without talking to the others:

- `every=N`: the multiples of N seconds since the Unix epoch (every="30s" ticks at
  :00 and :30 of each minute, whenever each process started). No process keeps
  its own phase, so two processes never disagree on a tick.
- `cron`: croniter's ticks in CRON_TZ (UTC by default). On a spring-forward day a
  tick inside the skipped hour runs at the jump (02:30 runs at 03:00); on a
  fall-back day a wall time that happens twice runs once, the first time, unless
  the expression's hour field is `*` (then it means "every hour", and both real
  hours run), as Vixie cron does.

This module imports neither gevent nor the database driver.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from .registry import TaskDef

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
MAX_SKIPS = 4  # repeated wall times skipped in a row before giving up (never more than 2)


@dataclass(frozen=True)
class Schedule:
    cron: str | None = None
    every: float | None = None  # seconds

    @classmethod
    def of(cls, definition: TaskDef) -> Schedule:
        return cls(cron=definition.cron, every=definition.every)

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """"cron */5 * * * *" or "every 30s" (TaskDef.schedule, as serve processes
        record it in taskworker_processes). Raises ValueError."""
        kind, _, rest = text.strip().partition(" ")
        rest = rest.strip()
        if kind == "cron" and len(rest.split()) == 5:
            from croniter import croniter

            if croniter.is_valid(rest):
                return cls(cron=rest)
        elif kind == "every" and rest.endswith("s"):
            seconds = float(rest[:-1])
            if seconds > 0:
                return cls(every=seconds)
        raise ValueError(f"not a schedule: {text!r}")

    def __str__(self) -> str:
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every:.15g}s"


def latest_tick(schedule: Schedule, now: datetime, tz: str = "UTC") -> datetime:
    """The tick at or before `now` (the latest one due), in UTC."""
    if schedule.every is not None:
        period = _period(schedule.every)
        return EPOCH + period * ((now - EPOCH) // period)
    zone = ZoneInfo(tz)
    it = _croniter(schedule.cron, now.astimezone(zone))
    tick = it.get_prev(datetime)
    following = _croniter(schedule.cron, tick).get_next(datetime)
    if following <= now:  # croniter's get_prev is strictly before a start on a tick
        tick = following
    for _ in range(MAX_SKIPS):
        if not _repeated(schedule.cron, tick, zone):
            break
        tick = _croniter(schedule.cron, tick).get_prev(datetime)
    return tick.astimezone(UTC)


def next_tick(schedule: Schedule, now: datetime, tz: str = "UTC") -> datetime:
    """The first tick strictly after `now`, in UTC."""
    if schedule.every is not None:
        return latest_tick(schedule, now) + _period(schedule.every)
    zone = ZoneInfo(tz)
    it = _croniter(schedule.cron, now.astimezone(zone))
    tick = it.get_next(datetime)
    for _ in range(MAX_SKIPS):
        if not _repeated(schedule.cron, tick, zone):
            break
        tick = it.get_next(datetime)
    return tick.astimezone(UTC)


def show(tick: datetime) -> str:
    """A tick for log lines and `taskworker schedule`: 2026-11-27T20:55:00Z (with
    the fraction of a second when it has one)."""
    tick = tick.astimezone(UTC)
    text = tick.strftime("%Y-%m-%dT%H:%M:%S")
    if tick.microsecond:
        text += f".{tick.microsecond:06d}".rstrip("0")
    return text + "Z"


def _period(seconds: float) -> timedelta:
    """`every` as a whole number of microseconds (integer arithmetic: no float
    rounding makes two processes disagree on a tick)."""
    return max(round(seconds * 1_000_000), 1) * MICROSECOND


def _croniter(expression: str | None, start: datetime):  # noqa: ANN202 (croniter has no types)
    from croniter import croniter  # (only a process with cron tasks needs it)

    return croniter(expression, start)


def _repeated(expression: str | None, tick: datetime, zone: ZoneInfo) -> bool:
    """Is `tick` the second pass of a wall time the fall-back hour repeats, for an
    expression with a fixed hour? (Then it already ran the first time.)"""
    if expression is None or expression.split()[1] == "*":
        return False
    first = tick.replace(tzinfo=zone, fold=0)  # the first pass
    return first.astimezone(UTC) != tick.astimezone(UTC)
