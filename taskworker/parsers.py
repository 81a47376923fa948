"""Parsers of settings (TASK_MODULES, QUEUES, CRON_TZ, hosts, task names, sizes,
secrets):
each takes the raw string and returns the value or raises ValueError with the
reason."""
from __future__ import annotations

import ipaddress
import re

# Most workers one process runs (WORKER_COUNT), and so the largest cap of a queue:
# each worker costs about 9 KB (100,000 take 900 MB); 10 million exhaust the memory.
MAX_WORKERS = 100_000


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
            if not cap.strip().isdigit() or not 1 <= int(cap) <= MAX_WORKERS:
                raise ValueError(f"the cap of queue {name!r} must be a whole number "
                                 f"between 1 and {MAX_WORKERS:,}")
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


def host(raw: str) -> str:
    value = raw.strip()
    if value.startswith("[") and value.endswith("]"):  # [::1] as in a URL
        value = value[1:-1]
    if not re.fullmatch(r"[0-9A-Za-z.:_-]+", value):
        raise ValueError("expected a host name or an IP address, such as 127.0.0.1 or 0.0.0.0")
    return value


def host_name(raw: str) -> str:
    """A host name or IP address as the dashboard compares them (DASHBOARD_HOSTS,
    Host headers): lower case, without one trailing dot, an IPv6 address without
    its brackets, every address in its canonical form. ValueError when it is
    neither a name nor an address."""
    value = raw.strip().lower()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    value = value[:-1] if value.endswith(".") else value
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", value) \
            or len(value) > 253:
        raise ValueError(f"{raw.strip()!r} is not a host name or an IP address (without a port)")
    return value


def hosts(raw: str) -> tuple[str, ...]:
    """`tasks.example.com,10.0.0.5`: names and addresses, without ports."""
    found = tuple(dict.fromkeys(host_name(part) for part in raw.split(",") if part.strip()))
    if not found:
        raise ValueError("expected host names or addresses such as tasks.example.com,10.0.0.5")
    return found


def task_names(raw: str) -> tuple[str, ...]:
    """`send_email,reset_password`: task names (as @taskworker.task takes them), or
    `*` for every task, those without a name included."""
    found = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if "*" in found:
        if len(found) > 1:
            raise ValueError("`*` (every task) goes alone")
        return found
    for name in found:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}", name):
            raise ValueError(f"{name!r} is not a task name (expected send_email,billing.charge "
                             "or *)")
    if not found:
        raise ValueError("expected task names such as send_email,billing.charge, or *")
    return found


def secret(raw: str) -> str:
    if any(c in raw for c in "\r\n"):
        raise ValueError("must be one line")
    return raw


def user_name(raw: str) -> str:
    value = raw.strip()
    if ":" in value or not value.isprintable():
        raise ValueError("expected a user name without ':'")
    return value


def byte_size(raw: str) -> int:
    """Bytes from `1048576`, `512kB`, `1MB`, `2GB` (powers of 1024, as PostgreSQL
    counts them; `KiB`, `MiB`, `GiB` say the same)."""
    m = re.fullmatch(r"\s*(\d+)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*", raw)
    if not m:
        raise ValueError("expected a size in bytes such as 1048576, 512kB or 1MB")
    scale = {None: 1, "B": 1, "kB": 1024, "KB": 1024, "KiB": 1024, "MB": 1024**2,
             "MiB": 1024**2, "GB": 1024**3, "GiB": 1024**3}[m.group(2)]
    return int(m.group(1)) * scale
