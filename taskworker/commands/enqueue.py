"""`taskworker enqueue`: add tasks from the command line, or one per line of stdin,
or one call of a registered task with JSON arguments (--args, --kwargs)."""
from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import IO, Any, TypedDict

import click
import psycopg2

from .. import codec, registry
from ..client import (
    Enqueued,
    RunAt,
    UnknownTaskName,
    check_payload,
    check_unique_key,
    enqueue_call_unique,
    enqueue_many,
    enqueue_unique,
    place,
)
from ..settings import Settings
from ..store.database import PgConnection, first_line
from . import text
from .context import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    CommandError,
    database,
    duration,
    fail,
    load_settings,
)

ENQUEUE_BATCH = 5000  # stdin lines per INSERT and per commit
BATCH_BYTES = 64 * 1024 * 1024  # ... or fewer: a batch of stdin holds at most this much


class Options(TypedDict):
    """The enqueue API's keyword arguments that the command's options give."""

    task: str | None
    queue: str | None
    priority: int | None
    run_at: RunAt
    force: bool  # a name TASK_MODULES does not register, enqueued anyway (or unchecked)


@click.command()
@click.argument("payloads", nargs=-1, metavar="[PAYLOAD]...")
@click.option("--task", "task_name", metavar="NAME",
              help="Run by the task registered as NAME (default: the default handler).")
@click.option("--args", "args_json", metavar="JSON",
              help='Call --task with these positional arguments: a JSON list, \'["a", 2]\'.')
@click.option("--kwargs", "kwargs_json", metavar="JSON",
              help='Call --task with these keyword arguments: a JSON object, \'{"k": 1}\'.')
@click.option("--queue", metavar="NAME",
              help="Queue (default: the task's, when TASK_MODULES registers it, else default).")
@click.option("--priority", type=click.IntRange(-2**31, 2**31 - 1), metavar="INT",
              help="Higher runs first within its queue (default: the task's, else 0).")
@click.option("--run-at", metavar="TIME",
              help="Due at TIME, ISO 8601: 2030-01-31T08:00 (local time) or with an offset.")
@click.option("--delay", metavar="DURATION", help="Due DURATION from now: 30s, 10m, 2h, 1d.")
@click.option("--unique-key", metavar="KEY",
              help="Insert nothing while a pending or running task has KEY (one PAYLOAD only).")
@click.option("--tasks", "task_modules", metavar="MODULES",
              help="Import these modules to check --task's name and take its queue and "
                   "priority (default: TASK_MODULES).")
@click.option("--force", is_flag=True,
              help="Enqueue a --task name the task modules do not register.")
@click.option("--batch-size", default=ENQUEUE_BATCH, show_default=True,
              type=click.IntRange(min=1), help="Rows per INSERT (and per commit for -).")
def enqueue(payloads: tuple[str, ...], task_name: str | None, args_json: str | None,
            kwargs_json: str | None, queue: str | None, priority: int | None,
            run_at: str | None, delay: str | None, unique_key: str | None,
            task_modules: str | None, force: bool, batch_size: int) -> None:
    """Add one pending task per PAYLOAD; print their ids, one per line. Or, with
    --args and/or --kwargs (JSON) instead of PAYLOADs, one task that calls the
    function registered as --task with them, as `send_email.enqueue(conn,
    "ann@example.com", subject="Hi")` does from Python.

    Several PAYLOADs are inserted in one transaction. `taskworker enqueue -`
    reads one payload per line from stdin (UTF-8; blank lines skipped) and
    commits every --batch-size lines, printing the ids as they are committed; a
    progress bar shows on stderr when it is a terminal and stdout is not.

    With --unique-key, while a pending or running task has KEY nothing is
    inserted: that task's id is printed, and a line on stderr says so (exit 0).

    With --task and TASK_MODULES (or --tasks), the name is checked: one the
    modules do not register is refused with the nearest registered name (exit
    2; --force enqueues it anyway); without them, a line on stderr says the
    name, queue and priority could not be checked.

    \b
      taskworker enqueue "resize photo 1" "resize photo 2"
      taskworker enqueue --delay 10m "send the reminder"
      taskworker enqueue --task invoice --unique-key invoice-42 42
      taskworker enqueue - < payloads.txt > ids.txt
      taskworker enqueue --task send_email --args '["ann@example.com"]' \\
          --kwargs '{"subject": "Hi"}' --delay 10m

    The arguments are checked before anything is inserted: JSON that is a list
    (--args) and an object (--kwargs), values PostgreSQL's jsonb can hold, and,
    when TASK_MODULES registers the task, the function's signature.
    """
    settings = load_settings({"TASK_MODULES": task_modules})
    if args_json is not None or kwargs_json is not None:
        call = parse_call(payloads, task_name, args_json, kwargs_json)
        options = placement(settings, task_name, queue, priority, schedule(run_at, delay),
                            unique_key, force)
        check_call(task_name, *call)
        with database(settings, "enqueue", autocommit=False) as conn:
            enqueue_one_call(conn, call, options, unique_key, settings.max_payload_bytes)
        return
    if not payloads:
        fail("give a PAYLOAD (or - to read stdin), or --task NAME with --args/--kwargs",
             EXIT_CONFIG)
    if unique_key is not None and (len(payloads) != 1 or payloads[0] == "-"):
        fail("--unique-key takes exactly one PAYLOAD (not -)", EXIT_CONFIG)
    options = placement(settings, task_name, queue, priority, schedule(run_at, delay),
                        unique_key, force)
    with database(settings, "enqueue", autocommit=False) as conn:
        if unique_key is not None:
            enqueue_once(conn, payloads[0], unique_key, options, settings.max_payload_bytes)
            return
        if list(payloads) == ["-"]:
            enqueue_stdin(conn, options, batch_size, settings.max_payload_bytes)
            return
        if "-" in payloads:
            raise CommandError('"-" (read stdin) must be the only PAYLOAD', EXIT_CONFIG)
        try:
            ids = enqueue_many(conn, payloads, **options, batch_size=batch_size,
                               max_bytes=settings.max_payload_bytes)
        except ValueError as exc:  # over MAX_PAYLOAD_BYTES: nothing was enqueued
            raise CommandError(f"{exc}; nothing was enqueued") from None
        conn.commit()
        print_ids(ids)


def placement(settings: Settings, task_name: str | None, queue: str | None,
              priority: int | None, run_at: RunAt, unique_key: str | None,
              force: bool = False) -> Options:
    """The enqueue API's options, checked now (one line and exit 2 when bad).

    With --task, the TASK_MODULES of the settings are imported first, so that a
    task's declared queue and priority are filled in as they are for the
    application's own enqueue calls, and a misspelt name is refused (unless
    --force). Without TASK_MODULES, nothing can be checked: one line says so.
    """
    if task_name is not None:
        try:
            registry.check_name(task_name, "task")
        except ValueError as exc:
            fail(str(exc), EXIT_CONFIG)
    checked = task_name is not None and bool(settings.task_modules)
    if checked:
        try:
            registry.import_modules(settings.task_modules)
        except registry.RegistryError as exc:
            fail(str(exc), EXIT_CONFIG)
    elif task_name is not None:
        click.echo(f"Warning: task {task_name!r} could not be checked (set TASK_MODULES or "
                   "--tasks to check its name, queue and priority)", err=True)
    options = Options(task=task_name, queue=queue, priority=priority, run_at=run_at,
                      force=force or not checked)
    try:
        place(**options, delay=None)
        if unique_key is not None:
            check_unique_key(unique_key)
    except UnknownTaskName as exc:
        fail(str(exc).replace("force=True", "--force"), EXIT_CONFIG)
    except (TypeError, ValueError) as exc:
        fail(str(exc), EXIT_CONFIG)
    return options


Call = tuple[list[Any], dict[str, Any]]  # (args, kwargs)


def parse_call(payloads: tuple[str, ...], task_name: str | None, args_json: str | None,
               kwargs_json: str | None) -> Call:
    """The call --args and --kwargs give, as (args, kwargs); one line and exit 2
    when it cannot be sent."""
    if payloads:
        fail("give PAYLOADs or --args/--kwargs, not both (a call's arguments are JSON)",
             EXIT_CONFIG)
    if task_name is None:
        fail("--args and --kwargs call a registered task: name it with --task", EXIT_CONFIG)
    args = [] if args_json is None else parse_json("--args", args_json)
    kwargs = {} if kwargs_json is None else parse_json("--kwargs", kwargs_json)
    if not isinstance(args, list):
        fail(f"--args must be a JSON list of the positional arguments, such as "
             f'\'["ann@example.com", 2]\', not {json_kind(args)}', EXIT_CONFIG)
    if not isinstance(kwargs, dict):
        fail(f"--kwargs must be a JSON object of the keyword arguments, such as "
             f'\'{{"subject": "Hi"}}\', not {json_kind(kwargs)}', EXIT_CONFIG)
    try:
        codec.encode_call(args, kwargs, f"{task_name}()")
    except codec.NotJSON as exc:  # NaN, Infinity, 1e999, a NUL, a lone surrogate ("\ud800")
        fail(str(exc), EXIT_CONFIG)
    return args, kwargs


def parse_json(option: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"invalid {option}: not JSON ({exc.msg} at character {exc.pos + 1})",
             EXIT_CONFIG)
    except ValueError as exc:  # an integer of more than 4,300 digits
        fail(f"invalid {option}: {exc}", EXIT_CONFIG)
    except RecursionError:
        fail(f"invalid {option}: nested too deeply", EXIT_CONFIG)


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def check_call(task_name: str | None, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Against the function's signature, when TASK_MODULES registered the task
    (`placement` imported them): one line and exit 2 when it refuses the call."""
    known = registry.get(task_name) if task_name is not None else None
    if known is None:
        return
    try:
        registry.check_call(known, args, kwargs)
    except TypeError as exc:  # "send_email(): missing a required argument: 'to'"
        fail(str(exc), EXIT_CONFIG)


def enqueue_one_call(conn: PgConnection, call: Call, options: Options,
                     unique_key: str | None, max_bytes: int) -> None:
    """--args/--kwargs: insert the call (or, with --unique-key, print the id of
    the live task holding the key) and commit."""
    args, kwargs = call
    chosen = registry.Options(options["queue"], options["priority"], options["run_at"],
                              None, unique_key)
    try:
        done = enqueue_call_unique(conn, options["task"], args, kwargs, chosen,
                                   max_bytes=max_bytes, force=options["force"])
    except ValueError as exc:  # over MAX_PAYLOAD_BYTES
        raise CommandError(f"{exc}; nothing was enqueued") from None
    conn.commit()
    print_ids([done.id])
    said_held(done, unique_key)


def said_held(done: Enqueued, unique_key: str | None) -> None:
    """A line on stderr when a live task held the unique key (nothing inserted)."""
    if not done.inserted:
        state = "running" if done.status == "in_progress" else done.status
        click.echo(f"Task {done.id} already {state} with unique key {unique_key!r}; "
                   "nothing inserted", err=True)


def enqueue_once(conn: PgConnection, payload: str, unique_key: str, options: Options,
                 max_bytes: int) -> None:
    """--unique-key: insert, or print the id of the live task holding the key."""
    try:
        done = enqueue_unique(conn, payload, unique_key, **options, max_bytes=max_bytes)
    except ValueError as exc:  # over MAX_PAYLOAD_BYTES
        raise CommandError(f"{exc}; nothing was enqueued") from None
    conn.commit()
    print_ids([done.id])
    said_held(done, unique_key)


def schedule(run_at: str | None, delay: str | None) -> RunAt:
    """When enqueued tasks become due: --run-at (ISO 8601) or --delay, or None (now)."""
    if run_at is not None and delay is not None:
        fail("give --run-at or --delay, not both", EXIT_CONFIG)
    if delay is not None:
        return timedelta(seconds=duration("--delay", delay))
    if run_at is None:
        return None
    try:
        when = datetime.fromisoformat(run_at.strip())
    except ValueError:
        fail(f"invalid --run-at={run_at!r}: expected an ISO 8601 time such as "
             "2030-01-31T08:00 or 2030-01-31T08:00+02:00", EXIT_CONFIG)
    return when if when.tzinfo is not None else when.astimezone()  # naive: local time


def enqueue_stdin(conn: PgConnection, options: Options, batch_size: int,
                  max_bytes: int) -> None:
    """One INSERT and one commit per batch of lines, ids printed as each commits.

    COPY would be faster still, but psycopg2 refuses it while psycogreen's wait
    callback is installed; unnest() batches of a few thousand rows come close.
    """
    # The streams click.get_binary_stream/get_text_stream returned (deprecated in
    # click 8.5, gone in 9; they rewrapped stderr only for a broken encoding).
    stdin = sys.stdin.buffer
    stderr = sys.stderr
    size = file_size(stdin)
    # The bar goes to stderr; ids printed on the same terminal would tear it apart.
    wanted = stderr.isatty() and not sys.stdout.isatty()
    counted: Iterator[int] = iter(())  # (without a length, the bar needs an iterable)
    bar = click.progressbar(
        length=size, iterable=None if size else counted, label="Enqueuing", file=stderr,
        show_eta=bool(size), hidden=not wanted,
        item_show_func=lambda n: f"{n} tasks" if n is not None else None)
    done = 0
    try:
        with bar:
            for batch, nbytes in stdin_batches(stdin, batch_size, max_bytes):
                if batch:
                    ids = enqueue_many(conn, batch, **options, batch_size=batch_size,
                                       max_bytes=max_bytes)
                    conn.commit()
                    print_ids(ids)
                    done += len(ids)
                bar.update(nbytes if size else len(batch), done)
    except CommandError as exc:
        raise CommandError(f"{exc}; {enqueued_so_far(done)}") from None
    except psycopg2.Error as exc:
        raise CommandError(f"database error: {first_line(exc)}; {enqueued_so_far(done)}"
                           ) from None
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; {enqueued_so_far(done)}", EXIT_INTERRUPTED) from None


def enqueued_so_far(done: int) -> str:
    if not done:
        return "nothing was enqueued"
    return f"{text.tasks(done)} enqueued before that (their ids are printed), the rest were not"


def file_size(stream: IO[bytes]) -> int | None:
    """Size in bytes when stdin is a regular file (so the bar can show a percentage)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


def stdin_batches(stream: IO[bytes], batch_size: int, max_bytes: int,
                  ) -> Iterator[tuple[list[str], int]]:
    """(payloads, bytes read) per `batch_size` non-blank lines of UTF-8 text, or
    fewer lines when they come to BATCH_BYTES.

    A line ends at \\n (a \\r before it is dropped too). Lines that are empty or
    only whitespace are skipped; any other line is the payload exactly as it is,
    leading and trailing spaces included. A line is read no further than
    `max_bytes` (and its line end): a longer one is refused there, unread.
    """
    batch: list[str] = []
    nbytes = held = 0
    number = 0
    while raw := stream.readline(max_bytes + 2):  # the payload, then \r\n
        number += 1
        nbytes += len(raw)
        if len(raw) == max_bytes + 2 and not raw.endswith(b"\n"):
            raise CommandError(f"line {number} is more than {max_bytes} bytes, over "
                               f"MAX_PAYLOAD_BYTES={max_bytes}")
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            payload = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"line {number} is not UTF-8 text "
                               f"(byte {exc.start + 1}: {exc.reason})") from None
        if not payload or payload.isspace():
            continue
        try:
            check_payload(payload, max_bytes)
        except ValueError as exc:  # "payload contains a NUL character, which ..."
            raise CommandError(f"line {number} {str(exc).removeprefix('payload ')}") from None
        batch.append(payload)
        held += len(line)
        if len(batch) == batch_size or held >= BATCH_BYTES:
            yield batch, nbytes
            batch, nbytes, held = [], 0, 0
    if batch or nbytes:
        yield batch, nbytes


def print_ids(ids: Sequence[int]) -> None:
    if ids:
        click.echo("\n".join(map(str, ids)))
