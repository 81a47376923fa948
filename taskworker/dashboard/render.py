"""Jinja2, with autoescaping on for every template: whatever comes from the
database (payloads, errors, names) reaches the page as text, never as markup."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

FOLD_CHARS = 2000  # longer values are shown folded (<details>)
SHOWN_CHARS = 100_000  # at most this much of a value on the task page; the rest: raw link
HIDDEN = "hidden (DASHBOARD_HIDE_ARGUMENTS)"  # in place of a value the settings hide
HINTS = {  # what the two states of a task in progress mean (titles on the pages)
    "claimed": "taken by a process, waiting in its local queue: its handler has not started",
    "running": "taken by a process: its handler has started"}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S UTC"  # every date and time the pages show


def age(seconds: float | None) -> str:
    """3s, 4m 10s, 2h 5m, 3d 4h."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(value: datetime | str | None) -> str:
    """Every date the pages show, in one format: 2026-12-06 22:18:30 UTC (to the
    second, in UTC, whatever the session's time zone). Also takes the ISO text of
    schedule_listing (2026-12-06T22:15:00Z), which `taskworker schedule` prints."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(DATE_FORMAT)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def environment() -> Environment:
    env = Environment(loader=PackageLoader("taskworker.dashboard", "templates"),
                      autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(age=age, when=when, number=number)
    env.globals.update(FOLD_CHARS=FOLD_CHARS, SHOWN_CHARS=SHOWN_CHARS, HIDDEN=HIDDEN,
                       hints=HINTS)
    return env


class Templates:
    def __init__(self) -> None:
        self.env = environment()

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)
