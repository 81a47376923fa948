"""Parsers of the part-7 settings (TASK_MODULES, QUEUES, CRON_TZ): each takes the
raw string and returns the value or raises ValueError with the reason."""
from __future__ import annotations

import re


def modules(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name):
            raise ValueError(f"{name!r} is not a module name (expected a.b,c.d)")
    return names


def queues(raw: str) -> tuple[tuple[str, int | None], ...]:
    """`images:5,default`: queue names, each with an optional cap on how many of its
    tasks run at once in this process."""
    found: dict[str, int | None] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, cap = part.partition(":")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}", name):
            raise ValueError(f"{name!r} is not a queue name (expected images:5,default)")
        if sep:
            if not cap.strip().isdigit() or int(cap) < 1:
                raise ValueError(f"the cap of queue {name!r} must be a whole number of 1 or more")
            found[name] = int(cap)
        else:
            found[name] = None
    if not found:
        raise ValueError("expected queue names such as images:5,default")
    return tuple(found.items())


def time_zone(raw: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not a time zone name such as UTC or Europe/Berlin") from None
    return raw.strip()
