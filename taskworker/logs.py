"""Logging to stdout in the original tool's format, or as JSON lines.

Plain lines look like the Go original's: `2025/04/16 22:53:27 Fetched 10 tasks`.
With LOG_FORMAT=json each record is one JSON object carrying the task fields
(task_id, worker, attempt) passed as `extra=`, for log shippers.

The handler is the root logger's, not taskworker's alone: a task handler's own
`logging` calls and Python warnings come out in the same format, so that in JSON
mode every line the process writes parses (journald and container runtimes merge
stdout and stderr, and one plain line stops `jq`). Either way one record is one
line: a newline in a message (an exception's, a payload's) is escaped, so no text
a task controls can forge a line.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TextIO

DATE_FORMAT = "%Y/%m/%d %H:%M:%S"
TASK_FIELDS = ("task_id", "worker", "attempt", "trace_id", "span_id")

log = logging.getLogger("taskworker")

_handler: logging.Handler | None = None  # the one setup() installed on the root logger
_format = "plain"  # of that handler: how error_line() writes too
# With OpenTelemetry (tracing.consumer sets it): the current span's trace_id and
# span_id, for the JSON lines written inside a task's span that carry none.
span_fields: Callable[[], Mapping[str, str] | None] | None = None


def one_line(text: str) -> str:
    """`text` with every non-printable character (newline, tab, escape, U+2028...)
    written as its escape: `a\\nb`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PlainFormatter(logging.Formatter):
    """`YYYY/MM/DD HH:MM:SS message`, a traceback (a handler's log.exception)
    included, on one line.

    A task's stored traceback (`extra={"traceback": text}`, with `task_id`)
    follows its record as lines of their own, each one escaped and marked
    `Task ID: N |`, so that a text the task controls can never pass for
    another line of the log."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = one_line(super().format(record))
        traceback = getattr(record, "traceback", None)
        if not traceback:
            return text
        stamp = self.formatTime(record, DATE_FORMAT)
        mark = f"Task ID: {getattr(record, 'task_id', '?')} |"
        return "\n".join([text] + [f"{stamp} {mark} {one_line(line)}"
                                    for line in traceback.rstrip("\n").split("\n")])


# Characters that JSON leaves as they are but that some readers take for a line
# break (Python's splitlines, JavaScript before ES2019).
_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message, the task fields;
    `logger` when the record is not taskworker's own (a handler's, or
    `py.warnings`), and `exception` with the traceback when there is one.

    The time is RFC 3339 in UTC, `2026-11-27T20:59:12.418Z`, which Go's parser
    (promtool, Loki, Vector), Python's fromisoformat and JavaScript read, and
    which sorts as text in time order across hosts in different time zones."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for field in TASK_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if span_fields is not None and "trace_id" not in entry:
            entry.update(span_fields() or ())
        traceback = getattr(record, "traceback", None)
        if traceback:  # a task's stored traceback
            entry["traceback"] = traceback
        if record.name != log.name:
            entry["logger"] = record.name
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(entry, ensure_ascii=False, default=str)
        if not text.isascii():
            for char, escape in _BREAKS.items():
                text = text.replace(char, escape)
        return text


def setup(level: str = "INFO", fmt: str = "plain") -> None:
    """Send every logger's records (taskworker's, a handler's, warnings) to stdout
    in `fmt`, at `level` and above; again replaces what an earlier call set."""
    global _handler, _format
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    if _handler in root.handlers:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler, _format = handler, fmt
    log.handlers.clear()
    log.setLevel(level)
    log.propagate = True
    warnings.showwarning = _show_warning
    _hub_errors_to_log()
    if fmt == "json":
        sys.excepthook = _uncaught
    elif sys.excepthook is _uncaught:
        sys.excepthook = sys.__excepthook__


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """A warning as one record of the `py.warnings` logger (as
    logging.captureWarnings does, but without the source line that
    warnings.formatwarning adds on a second line)."""
    if file is not None:  # written somewhere on purpose (warnings.showwarning(..., file=f))
        try:
            file.write(warnings.formatwarning(message, category, filename, lineno, line))
        except OSError:  # (as warnings' own: a closed file loses the warning)
            pass
        return
    logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno,
                                             category.__name__, message)


def _uncaught(kind: type[BaseException], value: BaseException,
              tb: TracebackType | None) -> None:
    """In JSON mode, an exception nothing caught is a record too, not a bare
    traceback on stderr."""
    log.error("uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))


def _hub_errors_to_log() -> None:
    """The gevent hub's report of a greenlet that died of an exception (one a
    handler spawned, say) as a record, not a bare traceback on stderr: the
    process goes on, and its log stays one record a line."""
    import gevent
    from greenlet import greenlet

    def report(context: object, kind: type[BaseException] | None, value: object,
               tb: TracebackType | None) -> None:
        if context is None:
            where = "the gevent hub"
        elif isinstance(context, greenlet):
            where = str(context)
        else:  # e.g. a WSGI request's environ, whose headers may hold a password
            where = type(context).__name__
        log.error("%s failed with %s: %s", where, getattr(kind, "__name__", "an error"), value,
                  exc_info=(type(value), value, tb) if isinstance(value, BaseException) else None)

    gevent.get_hub().print_exception = report


def error_line(message: str, fmt: str | None = None) -> str:
    """The line a command that cannot go on ends with: `Error: message`, or in
    JSON (`fmt`, else the format setup() was given) a record of level error."""
    if (fmt or _format) == "json":
        return JsonFormatter().format(_record("error", message, {}))
    return f"Error: {message}"


def printable(text: str | None, limit: int = 200) -> str:
    """A payload as it may appear in one log line: escaped and cut to `limit`."""
    if text is None:
        return "<NULL>"
    cut = one_line(text[:limit])
    if len(text) > limit:
        cut += f"... ({len(text)} chars)"
    return cut


def seconds(value: float) -> str:
    """5 -> '5s', 1.5 -> '1.5s', 0.5 -> '500ms', as Go prints durations."""
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def format_line(level: str, message: str, fields: Mapping[str, object]) -> str:
    """One record formatted as the configured handler formats it (plain or JSON),
    without emitting it: for a thread that must not take the logging locks of
    the main thread (processor/monitor.py)."""
    formatter = _handler.formatter if _handler and _handler.formatter else PlainFormatter()
    return formatter.format(_record(level, message, fields))


def _record(level: str, message: str, fields: Mapping[str, object]) -> logging.LogRecord:
    return log.makeRecord(log.name, getattr(logging, level.upper()), "(taskworker)", 0,
                          message, (), None, extra={k: v for k, v in fields.items()
                                                    if v is not None})
