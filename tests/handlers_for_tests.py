"""Task handlers the fault-injection tests run inside `taskworker serve`.

Only ever imported by the serve subprocesses (the tests put this folder on their
PYTHONPATH and set TASK_HANDLER=handlers_for_tests:<name>), never by pytest. There
`time.sleep` and psycopg2 are already made cooperative by taskworker's patching,
so these handlers need no gevent import of their own.

Knobs come from the subprocess environment:
  TEST_SLEEP        seconds every handler sleeps before it answers (default 0)
  TEST_FAIL_TIMES   flaky: fail on attempts 1..N (default 2)
  TEST_RECORD_FOR   recording_patiently: seconds it keeps trying to record (default 60)
"""
from __future__ import annotations

import os
import secrets
import signal
import time

import psycopg2


def _sleep() -> None:
    seconds = float(os.environ.get("TEST_SLEEP", "0"))
    if seconds > 0:
        time.sleep(seconds)


def _record(task, note: str = "") -> None:  # type: ignore[no-untyped-def]
    """Add a row to the side table runs(task_id, pid, attempt, note, at), on a
    connection of our own: evidence that this process really ran the handler."""
    conn = psycopg2.connect(os.environ["DATABASE_URL"])  # the test's own setting
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO runs (task_id, pid, attempt, note) VALUES (%s, %s, %s, %s)",
                        (task.id, os.getpid(), task.attempt, note))
    finally:
        conn.close()


def recording(payload: str | None, task) -> str | None:  # type: ignore[no-untyped-def]
    """Sleep TEST_SLEEP, record the run in `runs`, return the reversed payload."""
    _sleep()
    _record(task)
    return None if payload is None else payload[::-1]


def recording_patiently(payload: str | None, task) -> str | None:  # type: ignore[no-untyped-def]
    """Record the run in `runs` as `recording` does, its note the payload and a
    token of this run ("task-7 3f2a..."), trying again on a lost or refused
    connection for up to TEST_RECORD_FOR seconds (through a failover:
    DATABASE_URL names both servers). A record sent again after a lost reply may
    land twice: count a task's runs as its distinct notes."""
    token = secrets.token_hex(8)
    until = time.monotonic() + float(os.environ.get("TEST_RECORD_FOR", "60"))
    while True:
        try:
            _record(task, f"{payload} {token}")
            break
        except psycopg2.OperationalError:
            if time.monotonic() > until:
                raise
            time.sleep(0.1)
    return None if payload is None else payload[::-1]


def poison(payload: str | None) -> str | None:
    """Kill our own process (SIGKILL) on the payload 'poison'; else sleep, reverse."""
    if payload == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    _sleep()
    return None if payload is None else payload[::-1]


def flaky(payload: str | None, task) -> str | None:  # type: ignore[no-untyped-def]
    """Fail on attempts 1..TEST_FAIL_TIMES, then succeed; every run is recorded."""
    _record(task)
    if task.attempt <= int(os.environ.get("TEST_FAIL_TIMES", "2")):
        raise RuntimeError(f"failed on attempt {task.attempt}")
    return None if payload is None else payload[::-1]


class Meltdown(BaseException):
    """Not an Exception: escapes any `except Exception` in a handler's caller."""


def misbehaving(payload: str | None) -> object:
    """Return what a handler must not return, or raise what it must not raise."""
    if payload == "bytes":
        return b"some bytes"
    if payload == "nul":
        return "before\x00after"
    if payload == "meltdown":
        raise Meltdown("the handler raised a BaseException")
    if payload == "greenlet exit":  # what gevent raises to kill a greenlet
        import gevent  # here, not at the top: only ever imported inside serve

        raise gevent.GreenletExit("raised by the handler itself")
    _sleep()
    return None if payload is None else payload[::-1]


def spin(payload: str | None) -> str | None:
    """Compute without ever yielding: for TEST_SPIN seconds, or for ever on the
    payload 'forever' (a handler that blocks the whole process)."""
    seconds = float("inf") if payload == "forever" else float(os.environ.get("TEST_SPIN", "3"))
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass
    return None if payload is None else payload[::-1]


def big_result(payload: str | None) -> str:
    """A result of TEST_RESULT_BYTES characters (ASCII: as many bytes)."""
    return "r" * int(os.environ.get("TEST_RESULT_BYTES", "1000"))


def stubborn(payload: str | None) -> str | None:
    """Sleep cooperatively; when cancelled (a second Ctrl+C), refuse to stop and
    compute for ever instead, blocking the whole process."""
    import gevent  # here, not at the top: only ever imported inside serve

    try:
        gevent.sleep(60)
    except gevent.GreenletExit:
        while True:
            pass
    return payload
