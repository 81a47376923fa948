"""The commands that feed, inspect and steer the queue: enqueue, status, show,
retry, cancel and prune.

cli.py declares them (options, help) and hands over a checked connection; this
module runs their queries (from queries.sql) and prints the results. A failure the
user should see as one line is raised as `CommandError`.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any

import click
import psycopg2
import psycopg2.extensions

from .store import sql
from .db import DatabaseUnavailable, first_line
from .producer import RunAt, enqueue_many
from .pruner import PRUNE_BATCH, prune_finished
from .settings import parse_duration

Connection = psycopg2.extensions.connection

ENQUEUE_BATCH = 5000  # stdin lines per INSERT and per commit
RETRY_BATCH = 10000  # rows per UPDATE of retry --all-errors
TOP_ERRORS = 5
STATUSES = ("pending", "in_progress", "done", "error", "cancelled")


def keyboard_interrupts() -> None:
    """Make Ctrl+C raise KeyboardInterrupt in the main greenlet, for the commands
    to end in their own way (`status --watch` exits 0, `enqueue -` says how far it
    got), instead of the entry module's immediate exit 130; and keep gevent's hub
    from printing the interrupt when it passes it on to the main greenlet."""
    import gevent

    signal.signal(signal.SIGINT, signal.default_int_handler)
    hub = gevent.get_hub()
    if KeyboardInterrupt not in hub.NOT_ERROR:
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


class CommandError(Exception):
    """Ends the command with `Error: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- option parsing


def duration(option: str, raw: str) -> float:
    """Seconds from an option's DURATION (30s, 5m, 2h, 7d); exit 2 when invalid."""
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise CommandError(f"invalid {option}={raw!r}: {exc}", 2) from None
    return seconds


def schedule(run_at: str | None, delay: str | None) -> RunAt:
    """When enqueued tasks become due: --run-at (ISO 8601) or --delay, or None (now)."""
    if run_at is not None and delay is not None:
        raise CommandError("give --run-at or --delay, not both", 2)
    if delay is not None:
        return timedelta(seconds=duration("--delay", delay))
    if run_at is None:
        return None
    try:
        when = datetime.fromisoformat(run_at.strip())
    except ValueError:
        raise CommandError(f"invalid --run-at={run_at!r}: expected an ISO 8601 time such as "
                           "2030-01-31T08:00 or 2030-01-31T08:00+02:00", 2) from None
    return when if when.tzinfo is not None else when.astimezone()  # naive: local time


# --- enqueue


def enqueue(conn: Connection, payloads: Sequence[str], run_at: RunAt, batch_size: int) -> None:
    """Insert the payloads (one transaction), or stdin's lines for `-`; print the ids."""
    if list(payloads) == ["-"]:
        _enqueue_stdin(conn, run_at, batch_size)
        return
    if "-" in payloads:
        raise CommandError('"-" (read stdin) must be the only PAYLOAD', 2)
    ids = enqueue_many(conn, payloads, run_at=run_at, batch_size=batch_size)
    conn.commit()
    _print_ids(ids)


def _enqueue_stdin(conn: Connection, run_at: RunAt, batch_size: int) -> None:
    """One INSERT and one commit per batch of lines, ids printed as each commits.

    COPY would be faster still, but psycopg2 refuses it while psycogreen's wait
    callback is installed; unnest() batches of a few thousand rows come close.
    """
    stdin = click.get_binary_stream("stdin")
    stderr = click.get_text_stream("stderr")
    size = _file_size(stdin)
    # The bar goes to stderr; ids printed on the same terminal would tear it apart.
    wanted = stderr.isatty() and not sys.stdout.isatty()
    bar = click.progressbar(
        length=size, iterable=None if size else (n for n in ()), label="Enqueuing", file=stderr,
        show_eta=bool(size), hidden=not wanted,
        item_show_func=lambda n: f"{n} tasks" if n is not None else None)
    done = 0
    try:
        with bar:
            for batch, nbytes in _stdin_batches(stdin, batch_size):
                if batch:
                    ids = enqueue_many(conn, batch, run_at=run_at, batch_size=batch_size)
                    conn.commit()
                    _print_ids(ids)
                    done += len(ids)
                bar.update(nbytes if size else len(batch), done)
    except CommandError as exc:
        raise CommandError(f"{exc}; {_enqueued_so_far(done)}") from None
    except psycopg2.Error as exc:
        raise CommandError(f"database error: {first_line(exc)}; {_enqueued_so_far(done)}"
                           ) from None
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; {_enqueued_so_far(done)}", 130) from None


def _enqueued_so_far(done: int) -> str:
    if not done:
        return "nothing was enqueued"
    return f"{_tasks(done)} enqueued before that (their ids are printed), the rest were not"


def _file_size(stream: IO[bytes]) -> int | None:
    """Size in bytes when stdin is a regular file (so the bar can show a percentage)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


def _stdin_batches(stream: IO[bytes], batch_size: int) -> Iterator[tuple[list[str], int]]:
    """(payloads, bytes read) per `batch_size` non-blank lines of UTF-8 text.

    A line ends at \\n (a \\r before it is dropped too); blank lines are skipped.
    """
    batch: list[str] = []
    nbytes = 0
    for number, raw in enumerate(stream, 1):
        nbytes += len(raw)
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"line {number} is not UTF-8 text "
                               f"(byte {exc.start + 1}: {exc.reason})") from None
        if "\x00" in text:
            raise CommandError(f"line {number} contains a NUL character, "
                               "which PostgreSQL text cannot hold")
        batch.append(text)
        if len(batch) == batch_size:
            yield batch, nbytes
            batch, nbytes = [], 0
    if batch or nbytes:
        yield batch, nbytes


def _print_ids(ids: Sequence[int]) -> None:
    if ids:
        click.echo("\n".join(map(str, ids)))


# --- status


def status_snapshot(conn: Connection) -> dict[str, Any]:
    """Everything `status` shows, read in one REPEATABLE READ, read-only transaction."""
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.status_summary)
            (*counts, scheduled, oldest, rescued, retrying) = cur.fetchone()
            cur.execute(sql.status_holders)
            holders = cur.fetchall()
            cur.execute(sql.status_errors, {"limit": TOP_ERRORS})
            errors = cur.fetchall()
    finally:
        if not conn.closed:  # closed: interrupted (Ctrl+C) or lost mid-query
            conn.rollback()
    return {
        "counts": dict(zip(STATUSES, counts, strict=True)),
        "scheduled": scheduled,
        "oldest_pending_seconds": None if oldest is None else round(float(oldest), 3),
        "rescued_last_hour": rescued,
        "retrying": retrying,
        "holders": [{"locked_by": holder, "tasks": n,
                     "lease_left_seconds": None if left is None else round(float(left), 3)}
                    for holder, n, left in holders],
        "top_errors": [{"error": error, "tasks": n} for error, n in errors],
    }


def render_status(snap: dict[str, Any]) -> str:
    """The snapshot as aligned tables."""
    counts = snap["counts"]
    rows = [("STATUS", "TASKS", "")]
    for name in STATUSES:
        note = f"{snap['scheduled']} scheduled for later" if name == "pending" \
            and snap["scheduled"] else ""
        rows.append((name, str(counts[name]), note))
    oldest = snap["oldest_pending_seconds"]
    lines = _table(rows, right=frozenset({1}))
    lines += [""] + _table([
        ("oldest due task waiting", "-" if oldest is None else _age(oldest)),
        ("rescued in the last hour", str(snap["rescued_last_hour"])),
        ("pending retries", str(snap["retrying"])),
    ], right=frozenset({1}))
    lines.append("")
    if snap["holders"]:
        rows = [("HOLDER (locked_by)", "TASKS", "LEASE LEFT")]
        for h in snap["holders"]:
            left = h["lease_left_seconds"]
            shown = "-" if left is None else (
                _age(left) if left >= 0 else f"expired {_age(-left)} ago")
            rows.append((h["locked_by"] or "(none)", str(h["tasks"]), shown))
        lines += _table(rows, right=frozenset({1}))
    else:
        lines.append("No task is running.")
    lines.append("")
    if snap["top_errors"]:
        rows = [(f"ERRORS (top {TOP_ERRORS})", "TASKS")]
        rows += [(_one_line(e["error"], 72), str(e["tasks"])) for e in snap["top_errors"]]
        lines += _table(rows, right=frozenset({1}))
    else:
        lines.append("No task has ended in error.")
    return "\n".join(lines)


def status(conn: Connection, as_json: bool) -> None:
    snap = status_snapshot(conn)
    click.echo(json.dumps(snap) if as_json else render_status(snap))


def watch(conn: Connection | None, reconnect: Callable[[], Connection], interval: float,
          as_json: bool) -> None:
    """Print the status every `interval` seconds until Ctrl+C.

    On a terminal the screen is cleared before each table; with --json each
    refresh is one JSON line. A lost database shows as an error line and the
    connection is opened again at the next refresh.
    """
    clear = sys.stdout.isatty() and not as_json
    try:
        while True:
            try:
                if conn is None or conn.closed:
                    conn = reconnect()
                snap: dict[str, Any] | None = status_snapshot(conn)
                problem = ""
            except (DatabaseUnavailable, psycopg2.Error) as exc:
                snap, problem = None, f"Error: {first_line(exc)} (trying again)"
                if conn is not None:
                    conn.close()
                    conn = None
            if as_json:
                if snap is not None:
                    click.echo(json.dumps({"time": _now(), **snap}))
                else:
                    click.echo(problem, err=True)
            else:
                if clear:
                    click.clear()
                click.echo(f"Every {interval:g}s: taskworker status    {_now()}\n")
                click.echo(render_status(snap) if snap is not None else problem)
                click.echo()
            time.sleep(interval)
    except KeyboardInterrupt:
        return
    finally:
        if conn is not None:
            conn.close()


# --- show


def show(conn: Connection, task_id: int, as_json: bool) -> None:
    """Every column of one task, in the table's order."""
    with conn.cursor() as cur:
        cur.execute(sql.task_get, {"id": task_id})
        row = cur.fetchone()
        names = [d[0] for d in cur.description or ()]
    if row is None:
        raise CommandError(f"no task with id {task_id}")
    if as_json:
        click.echo(json.dumps(dict(zip(names, row, strict=True)), default=_json_value))
        return
    width = max(map(len, names)) + 2
    for name, value in zip(names, row, strict=True):
        text = "(null)" if value is None else _printable(str(value))
        first, *rest = text.split("\n") or [""]
        click.echo(f"{name:<{width}}{first}".rstrip())
        for more in rest:
            click.echo(f"{'':<{width}}{more}".rstrip())


# --- retry, cancel, prune


def retry(conn: Connection, ids: Sequence[int] | None, since: float | None,
          batch_size: int = RETRY_BATCH) -> int:
    """Put tasks in error back to pending; print how many. Return the exit status:
    1 when a named id was not retried (each reported on stderr), else 0."""
    wanted = list(dict.fromkeys(ids)) if ids is not None else None
    retried: set[int] = set()
    with conn.cursor() as cur:
        cur.execute(sql.cutoff, {"seconds": since})
        before, since_time = cur.fetchone()
        while True:
            cur.execute(sql.retry, {"ids": wanted, "since": since_time, "before": before,
                                    "limit": batch_size})
            got = [row[0] for row in cur.fetchall()]
            if not got:
                break
            retried.update(got)
        if retried:
            cur.execute(sql.wake_others)
    click.echo(f"Retried {_tasks(len(retried))}")
    left = [i for i in wanted or () if i not in retried]
    for task_id, state, _holder in _states(conn, left):
        if state is None:
            click.echo(f"Error: no task with id {task_id}", err=True)
        elif state == "error":
            click.echo(f"Error: task {task_id} is busy (another command holds it): "
                       "try again", err=True)
        else:
            click.echo(f"Error: task {task_id} is {state}: only tasks in error are retried",
                       err=True)
    return 1 if left else 0


def cancel(conn: Connection, ids: Sequence[int]) -> int:
    """Cancel the pending tasks among `ids`; print how many. Return the exit status:
    1 when an id was not cancelled (each reported on stderr), else 0."""
    wanted = list(dict.fromkeys(ids))
    with conn.cursor() as cur:
        cur.execute(sql.cancel, {"ids": wanted})
        cancelled = {row[0] for row in cur.fetchall()}
    click.echo(f"Cancelled {_tasks(len(cancelled))}")
    left = [i for i in wanted if i not in cancelled]
    for task_id, state, holder in _states(conn, left):
        if state is None:
            click.echo(f"Error: no task with id {task_id}", err=True)
        elif state == "in_progress":
            click.echo(f"Error: task {task_id} is running (held by {holder}): running tasks "
                       "cannot be cancelled cleanly yet; left alone", err=True)
        else:
            click.echo(f"Error: task {task_id} is {state}: only pending tasks can be "
                       "cancelled", err=True)
    return 1 if left else 0


def prune(conn: Connection, older_than: float, statuses: Sequence[str],
          batch_size: int = PRUNE_BATCH) -> None:
    """Delete finished tasks not changed for `older_than` seconds, one batch per
    transaction (lowest ids first); print how many."""
    with conn.cursor() as cur:
        def query(statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            cur.execute(statement, params)
            return cur.fetchall()

        deleted = prune_finished(query, older_than, statuses, batch_size)
    click.echo(f"Deleted {_tasks(deleted)}")


def _states(conn: Connection, ids: Sequence[int]) -> list[tuple[int, str | None, str | None]]:
    """(id, status or None when there is no such task, locked_by), in the order of `ids`."""
    if not ids:
        return []
    with conn.cursor() as cur:
        cur.execute(sql.task_states, {"ids": list(ids)})
        found = {task_id: (state, holder) for task_id, state, holder in cur.fetchall()}
    return [(i, *found.get(i, (None, None))) for i in ids]


# --- formatting


def _table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as lines with aligned columns (those in `right` aligned right)."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if c in right else cell.ljust(w)
                 for c, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _age(seconds: float) -> str:
    """3d 4h, 2h 5m, 4m 12s, 12s, 0.4s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub}"
    return f"{s}s"


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _printable(text: str) -> str:
    """Control characters escaped, except newlines and tabs."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _one_line(text: str | None, limit: int) -> str:
    if text is None:
        return "(null)"
    flat = _printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)
