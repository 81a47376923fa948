"""Awkward payloads and misbehaving handlers: each task is processed or failed
cleanly with its message stored, and the worker that ran it keeps working."""
from __future__ import annotations

import re
import signal

from invariants import (
    FAST,
    handler_env,
    insert_tasks,
    stop_all,
    stray_traceback,
    tasks,
    wait_finished,
)

STAMP = re.compile(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ")
MEGABYTE = "".join(chr(0x20 + n % 0x5F) for n in range(1 << 20)) + "é"

CONTROL = "\x01\x1b[31m\n\t"
UNICODE = "naïve ✓ 𝄞"
ODD_TEXT = "e\u0301 \u202eevil\u202c \u2028 \u00a0 \ufeff \ufffd \U0001f469\u200d\U0001f4bb"


def test_awkward_payloads_with_the_demo_handler(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    payloads = [None, "", MEGABYTE, CONTROL, UNICODE, ODD_TEXT, "plain"]
    ids = dict(zip(["null", "empty", "mega", "control", "unicode", "odd", "plain"],
                   insert_tasks(db, payloads), strict=True))
    # (The megabyte payload is just over the default MAX_PAYLOAD_BYTES: allow it.)
    p = serve(db_url, env={**FAST, "WORKER_COUNT": "3", "MAX_PAYLOAD_BYTES": "2MB"})
    wait_finished(db, 30, [p])
    stop_all([p], signal.SIGINT)
    rows = tasks(db)

    null = rows[ids["null"]]
    assert null["status"] == "error"
    assert "payload is NULL" in null["error"]
    assert null["result"] is None
    for name in ("empty", "mega", "control", "unicode", "odd", "plain"):
        row = rows[ids[name]]
        assert (row["status"], row["error"]) == ("done", None), (name, row["error"])
        assert row["result"] == row["payload"][::-1], name
    assert rows[ids["unicode"]]["result"] == "𝄞 ✓ evïan"  # by code point
    assert rows[ids["empty"]]["result"] == ""
    assert len(rows[ids["mega"]]["result"]) == len(MEGABYTE)

    out = p.output()
    # Every line of the log is one record: no payload split a line or smuggled
    # in a terminal escape, and the 1 MB payload is cut short in its line.
    for line in out.split("\n")[:-1]:
        assert STAMP.match(line), f"a log line does not start with a time stamp: {line!r}"
        assert "\x1b" not in line and "\x01" not in line, line
        assert len(line) < 1000, f"log line of {len(line)} chars"
    control_line = re.search(rf"Processing task ID: {ids['control']} with payload: (.*)", out)
    assert control_line and control_line.group(1) == r"\x01\x1b[31m\n\t"
    assert re.search(rf"Processing task ID: {ids['unicode']} with payload: {UNICODE}$", out,
                     re.MULTILINE)
    assert re.search(rf"Processing task ID: {ids['null']} with payload: <NULL>$", out,
                     re.MULTILINE)
    assert f"Task ID: {ids['null']} processed with status: error" in out


def test_misbehaving_handler_fails_the_task_not_the_worker(db_url, db, serve) -> None:  # type: ignore[no-untyped-def]
    payloads = ["bytes", "fine 1", "nul", "fine 2", "meltdown", "fine 3", "greenlet exit",
                "fine 4", "fine 5"]
    ids = dict(zip(payloads, insert_tasks(db, payloads), strict=True))
    # One worker: every later task is proof that it survived the earlier ones.
    p = serve(db_url, env=handler_env("misbehaving", **FAST, WORKER_COUNT="1",
                                      FETCH_LIMIT="1"))
    wait_finished(db, 30, [p])
    assert p.proc.poll() is None, p.output()
    stop_all([p], signal.SIGINT)
    rows = tasks(db)

    def error(payload: str) -> str:
        row = rows[ids[payload]]
        assert (row["status"], row["result"]) == ("error", None), (payload, row)
        return row["error"]

    assert error("bytes") == "TypeError: handler returned bytes, expected str or None"
    assert error("nul").startswith("ValueError: result contains a NUL character")
    assert error("meltdown") == "worker crashed: Meltdown: the handler raised a BaseException"
    assert "worker crashed" in error("greenlet exit")
    assert "GreenletExit" in error("greenlet exit")
    for payload in payloads:
        if payload.startswith("fine"):
            row = rows[ids[payload]]
            assert (row["status"], row["result"]) == ("done", payload[::-1]), row
    assert all(r["attempts"] == 1 for r in rows.values())
    out = p.output()
    assert re.search(rf"crashed on task ID {ids['meltdown']} .*worker restarted", out)
    assert not stray_traceback(out), out
