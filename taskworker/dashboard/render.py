"""Jinja2, with autoescaping on for every template: whatever comes from the
database (payloads, errors, names) reaches the page as text, never as markup."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

FOLD_CHARS = 2000  # longer values are shown folded (<details>)
SHOWN_CHARS = 100_000  # at most this much of a value on the task page; the rest: raw link
HIDDEN = "hidden (DASHBOARD_HIDE_ARGUMENTS)"  # in place of a value the settings hide
HINTS = {  # what the two states of a task in progress mean (titles on the pages)
    "claimed": "in progress, not started: claimed by a process, it waits in its local queue",
    "running": "in progress: its handler has started"}


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


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %z")


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
