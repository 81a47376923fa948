"""Logging to stdout in the original tool's format, or as JSON lines.

Plain lines look like the Go original's: `2025/04/16 22:53:27 Fetched 10 tasks`.
With LOG_FORMAT=json each record is one JSON object carrying the task fields
(task_id, worker, attempt) passed as `extra=`, for log shippers.
"""
from __future__ import annotations

import json
import logging
import sys
import time

DATE_FORMAT = "%Y/%m/%d %H:%M:%S"
TASK_FIELDS = ("task_id", "worker", "attempt")

log = logging.getLogger("taskworker")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message and the task fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            + f".{int(record.msecs):03d}"
            + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for field in TASK_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "INFO", fmt: str = "plain") -> None:
    """Send taskworker's records to stdout, once, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", DATE_FORMAT))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def printable(text: str | None, limit: int = 200) -> str:
    """A payload as it may appear in one log line: escaped and cut to `limit`."""
    if text is None:
        return "<NULL>"
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    if len(text) > limit:
        cut += f"... ({len(text)} chars)"
    return cut


def seconds(value: float) -> str:
    """5 -> '5s', 1.5 -> '1.5s', 0.5 -> '500ms', as Go prints durations."""
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def format_line(level: str, message: str, fields: dict[str, object]) -> str:
    """One record formatted as the configured handler formats it (plain or JSON),
    without emitting it: for a thread that must not take the logging locks of
    the main thread (processor/monitor.py)."""
    record = log.makeRecord(log.name, getattr(logging, level.upper()), "(monitor)", 0,
                            message, (), None, extra={k: v for k, v in fields.items()
                                                      if v is not None})
    handler = log.handlers[0] if log.handlers else logging.StreamHandler()
    return handler.format(record)
