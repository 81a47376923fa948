"""The log of `taskworker serve`: as JSON (LOG_FORMAT=json) one object per line,
start-up, shutdown, a handler's own logging, warnings and start-up errors included,
task lines carrying their task id, worker and attempt; in the plain format one
stamped line per record; a task that ends in error logged at WARNING.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from invariants import REFUSE_RESULT, insert_tasks, query, query_free, stop_all, wait_until
from pgserver import UNREACHABLE_URL
from proc import ServeFactory, importable, run_cli


def test_json_logs_one_object_per_line(db_url: str, db: Any, serve: ServeFactory) -> None:
    query(db, "INSERT INTO tasks (payload) VALUES ('ok 1'), ('ok 2'), (NULL) RETURNING id")
    p = serve(db_url, env={"TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0",
                           "TASK_FAILURE_RATE": "0", "LOG_FORMAT": "json"})
    wait_until(lambda: p.output().count("processed with status") == 3, 30,
               "3 tasks processed", [p], fail_on_exit=True)
    stop_all([p], signal.SIGINT)
    lines = p.output().splitlines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, start-up and shutdown included (no traceback)
        assert {"time", "level", "message"} <= record.keys(), line
        assert record["level"] in ("debug", "info", "warning", "error"), line
        records.append(record)
    messages = [r["message"] for r in records]
    assert messages[0].startswith("Connecting to database: ")
    assert "All workers have completed, shutdown successful" in messages
    task_lines = [r for r in records if re.match(r"\[Worker \d+\] .*[Tt]ask ID: \d+",
                                                 r["message"])]
    # processing, finished, processed; and failed for NULL
    assert len(task_lines) == 10, task_lines
    for r in task_lines:
        assert isinstance(r["task_id"], int) and str(r["task_id"]) in r["message"], r
        assert r["worker"] >= 1 and r["attempt"] == 1, r
    assert all("task_id" not in r for r in records if r not in task_lines)
    assert time.strptime(records[0]["time"][:19], "%Y-%m-%dT%H:%M:%S")


# --- every line of the process, whoever writes it

NOISY = '''\
"""A handler that writes to the log the ways application code does."""
import logging
import warnings

import gevent

log = logging.getLogger("noisy.jobs")


class Meltdown(BaseException):  # not an Exception: the worker itself stops on it
    pass


def run(payload):
    if payload == "log":
        log.info("charging card for %s", payload)
        log.warning("card expires soon")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("could not split the bill")
        return "logged"
    if payload == "warn":
        warnings.warn("old_api() is deprecated, use new_api()", UserWarning)
        return "warned"
    if payload == "spawn":  # a greenlet of its own dies: the hub reports it
        gevent.spawn(lambda: 1 / 0).join()
        return "spawned"
    if payload == "store":
        return "a result the table refuses"  # (invariants.REFUSED_RESULT)
    if payload == "meltdown":
        raise Meltdown("the reactor")
    raise ValueError(payload)
'''
FORGED = "bad input\\n2026/01/01 00:00:00 [Worker 9] Task ID: 1 processed with status: done"
RAISES = FORGED.replace("\\n", "\n")  # the payload, and so the exception, has a newline
# RFC 3339 (what Go's time.Parse(time.RFC3339, ...) takes): a `T`, and `Z` or `+hh:mm`.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
BIG = 5 * 1024 * 1024
STAMP = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


@pytest.fixture
def noisy_env(tmp_path: Path) -> dict[str, str]:
    return {**importable(tmp_path / "mods", {"noisy": NOISY}), "TASK_HANDLER": "noisy:run",
            "FETCH_INTERVAL": "0.2"}


def parsed(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as JSON, each with an RFC 3339 time."""
    lines = text.splitlines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict) and {"time", "level", "message"} <= record.keys(), line
        assert RFC3339.fullmatch(record["time"]), line
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None, line
        records.append(record)
    return records


def test_json_every_line_of_the_process(db_url: str, db: Any, serve: ServeFactory,
                                        noisy_env: dict[str, str]) -> None:
    ids = dict(zip(["log", "warn", "spawn", "raise", "meltdown"],
                   insert_tasks(db, ["log", "warn", "spawn", RAISES, "meltdown"]), strict=True))
    p = serve(db_url, env={**noisy_env, "LOG_FORMAT": "json"})
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'pending'")
               == [(0,)], 30, "5 tasks processed", [p], fail_on_exit=True)
    stop_all([p], signal.SIGINT)
    records = parsed(p.output())  # stdout and stderr, merged as journald does
    assert [r for r in records if r["level"] not in ("debug", "info", "warning", "error")] == []

    def one(**fields: object) -> dict[str, Any]:
        found = [r for r in records if fields.items() <= r.items()]
        assert len(found) == 1, (fields, records)
        return found[0]

    one(logger="noisy.jobs", level="info", message="charging card for log")
    one(logger="noisy.jobs", level="warning", message="card expires soon")
    split = one(logger="noisy.jobs", level="error", message="could not split the bill")
    assert split["exception"].startswith("Traceback (most recent call last):")
    assert split["exception"].endswith("ZeroDivisionError: division by zero")
    warned = [r for r in records if r.get("logger") == "py.warnings"]
    assert len(warned) == 1 and warned[0]["level"] == "warning", records
    line = next(n for n, text in enumerate(NOISY.splitlines(), 1) if "warnings.warn(" in text)
    assert warned[0]["message"].endswith(
        f"noisy.py:{line}: UserWarning: old_api() is deprecated, use new_api()"), warned
    hub = [r for r in records if "failed with ZeroDivisionError" in r["message"]]
    assert len(hub) == 1 and hub[0]["level"] == "error", records
    assert "ZeroDivisionError: division by zero" in hub[0]["exception"]
    failed = one(level="warning", task_id=ids["raise"])
    assert failed["message"] == f"[Worker {failed['worker']}] Task ID: {ids['raise']} " \
                                f"failed: ValueError: {RAISES}"  # JSON keeps the newline
    assert "logger" not in failed
    # A worker that crashed: the task's failed line, a warning, and the crash, an error.
    crash = one(level="error", task_id=ids["meltdown"])
    assert crash["message"] == f"[Worker {crash['worker']}] crashed on task ID " \
                               f"{ids['meltdown']} (Meltdown: the reactor); worker restarted"
    one(level="warning", task_id=ids["meltdown"], message=f"[Worker {crash['worker']}] "
        f"Task ID: {ids['meltdown']} failed: worker crashed: Meltdown: the reactor")
    assert query(db, "SELECT status FROM tasks ORDER BY id") == \
        [("done",), ("done",), ("done",), ("error",), ("error",)]


def test_jq_reads_every_line(db_url: str, db: Any, serve: ServeFactory,
                             noisy_env: dict[str, str]) -> None:
    """jq, as a log pipeline runs it, over the whole output: it stops at the
    first line that is not JSON; and the log reference's recipe for its date parser."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (.ci/run installs it with apt-get)")
    insert_tasks(db, ["log", "warn", "spawn", RAISES])
    p = serve(db_url, env={**noisy_env, "LOG_FORMAT": "json"})
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'pending'")
               == [(0,)], 30, "4 tasks processed", [p], fail_on_exit=True)
    stop_all([p], signal.SIGINT)
    out = p.output()
    done = subprocess.run(
        [jq, "-r", r'[.level, (.time | sub("\\.[0-9]+"; "") | fromdateiso8601)] | @tsv'],
        input=out, capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr) == (0, ""), out
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == len(out.splitlines()) > 20
    assert {level for level, _ in rows} == {"info", "warning", "error"}
    assert all(abs(int(at) - time.time()) < 120 for _, at in rows), rows


def test_plain_failures_at_warning_one_stamped_line_each(
        db_url: str, db: Any, serve: ServeFactory, noisy_env: dict[str, str]) -> None:
    query_free(db, REFUSE_RESULT)
    raised, stored = insert_tasks(db, [RAISES, "store"])
    big = insert_tasks(db, ["x" * BIG])[0]  # over what a claim loads: refused unloaded
    p = serve(db_url, env={**noisy_env, "LOG_LEVEL": "WARNING", "MAX_PAYLOAD_BYTES": "1MB"})
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status = 'error'")
               == [(3,)], 30, "3 tasks in error", [p], fail_on_exit=True)
    spawned = insert_tasks(db, ["spawn"])[0]
    wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = %s", (spawned,))
               == [("done",)], 30, "the spawning task done", [p], fail_on_exit=True)
    stop_all([p], signal.SIGINT)
    lines = p.output().splitlines()
    assert [line for line in lines if not STAMP.match(line)] == []
    messages = [line[20:] for line in lines]
    worker = r"\[Worker \d+\] "
    # The original's line for each task that ended in error, though LOG_LEVEL=WARNING.
    assert [m for m in messages if re.fullmatch(
        worker + f"Task ID: {raised} failed: ValueError: " + re.escape(FORGED), m)], lines
    assert [m for m in messages if re.fullmatch(
        worker + f"Task ID: {stored} failed: could not store result: RaiseException: "
                 "results like this are not allowed", m)], lines
    assert f"Task ID: {big} failed: payload is {BIG} bytes, over MAX_PAYLOAD_BYTES=1048576" \
        in messages
    # The forged line is inside the escaped message only; nothing below WARNING.
    assert not [m for m in messages if m.startswith(("[Worker 9]", "2026/01/01"))]
    assert not [m for m in messages if re.match(worker + r"(Processing|Finished|Task ID: \d+ "
                                                 r"processed with)", m)]
    hub = [m for m in messages if "failed with ZeroDivisionError" in m]
    assert len(hub) == 1 and "\\n" in hub[0] and hub[0].endswith(
        "ZeroDivisionError: division by zero"), lines


def test_json_start_up_errors_are_one_json_line() -> None:
    for args, env, code, message in (
            (["serve"], {"WORKER_COUNT": "many"}, 2,
             "invalid WORKER_COUNT='many': expected a whole number"),
            (["serve", "--workerz", "3"], {}, 2, "No such option '--workerz'"),
            (["serve"], {"DATABASE_URL": UNREACHABLE_URL, "CONNECT_TIMEOUT": "3"}, 1,
             f"cannot connect to database {UNREACHABLE_URL}"),
            (["status"], {"DATABASE_URL": UNREACHABLE_URL, "CONNECT_TIMEOUT": "3"}, 1,
             f"cannot connect to database {UNREACHABLE_URL}")):
        got, out, err = run_cli(args, env={"LOG_FORMAT": "json", **env})
        assert got == code, (args, out, err)
        assert err.count("\n") == 1, (args, err)  # no usage text, no traceback
        error = parsed(err)[0]
        assert error["level"] == "error" and error["message"].startswith(message), error
        if out:  # serve says where it connects first
            assert [r["message"] for r in parsed(out)] == [
                f"Connecting to database: {UNREACHABLE_URL}"]
    # An invalid LOG_FORMAT itself: the plain line, which names it.
    assert run_cli(["serve"], env={"LOG_FORMAT": "yaml"}) == (
        2, "", "Error: invalid LOG_FORMAT='yaml': expected one of plain, json\n")
