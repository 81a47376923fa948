"""What a user sees of tasks called like Python functions (part 14), against a
real PostgreSQL and real processes: `taskworker enqueue --task --args --kwargs`
(and what it refuses, in one line, inserting nothing), `taskworker show` of a
call's arguments, return value and traceback, the dashboard's task page, list
and search, and DASHBOARD_HIDE_ARGUMENTS keeping argument values off every
page, out of the search and out of the bulk actions' filters.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from dashboard_client import Client, running_dashboard
from invariants import FAST, query, wait_until
from proc import cli, importable, run_cli

from taskworker.settings import SettingsError, load
from taskworker.typos import misspelled

APP = '''
import taskworker


@taskworker.task("send_email", queue="mail", priority=7)
def send_email(to, subject=""):
    if to == "nobody":
        raise LookupError(f"no mailbox for {to!r}")
    return {"to": to, "subject": subject, "lines": list(range(12))}
'''
SECRET = "s3cret-Passw0rd"  # an argument value DASHBOARD_HIDE_ARGUMENTS must keep hidden
HIDDEN = "hidden (DASHBOARD_HIDE_ARGUMENTS)"
WAIT = 30.0


def app_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """DATABASE_URL, and TASK_MODULES=app with app.py (APP) importable."""
    folder = tmp_path / "modules"
    return {"DATABASE_URL": db_url, "TASK_MODULES": "app",
            **importable(folder, None if folder.exists() else {"app": APP})}


def unchecked(name: str) -> str:
    """The line `enqueue --task` writes without TASK_MODULES (issue 25, item 7)."""
    return (f"Warning: task {name!r} could not be checked (set TASK_MODULES or --tasks to "
            "check its name, queue and priority)\n")


def rows(db: Any) -> list[dict[str, Any]]:
    names = ("id", "task", "format", "payload", "arguments", "queue", "priority",
             "unique_key", "run_at > now()")
    return [dict(zip(names, r, strict=True)) for r in query(
        db, f"SELECT {', '.join(names)} FROM tasks ORDER BY id")]


# --- taskworker enqueue --args --kwargs


def test_enqueue_sends_a_call_with_every_option(db_url: str, db: Any) -> None:
    code, out, err = cli(db_url, "enqueue", "--task", "send_email", "--args",
                         '["ann@example.com"]', "--kwargs", '{"subject": "Hi"}')
    assert (code, err) == (0, unchecked("send_email")), err
    [first] = rows(db)
    assert out == f"{first['id']}\n"
    assert first == {"id": first["id"], "task": "send_email", "format": 2, "payload": None,
                     "arguments": {"args": ["ann@example.com"], "kwargs": {"subject": "Hi"}},
                     "queue": "default", "priority": 0, "unique_key": None,
                     "run_at > now()": False}

    code, out, err = cli(db_url, "enqueue", "--task", "send_email", "--kwargs",
                         '{"to": "bob@example.com"}', "--queue", "mail", "--priority", "-3",
                         "--delay", "1h", "--unique-key", "bob")
    assert code == 0, err
    second = rows(db)[1]
    assert out == f"{second['id']}\n" and err == unchecked("send_email")
    assert second["arguments"] == {"args": [], "kwargs": {"to": "bob@example.com"}}
    assert (second["queue"], second["priority"], second["unique_key"],
            second["run_at > now()"]) == ("mail", -3, "bob", True)
    # The same key again: nothing inserted, the holder's id printed, a line on stderr.
    code, out, err = cli(db_url, "enqueue", "--task", "send_email", "--args", '["x"]',
                         "--unique-key", "bob")
    assert (code, out) == (0, f"{second['id']}\n"), err
    assert err == unchecked("send_email") + (
        f"Task {second['id']} already pending with unique key 'bob'; nothing inserted\n")
    assert len(rows(db)) == 2

    code, out, err = cli(db_url, "enqueue", "--task", "send_email", "--args", "[1, 2.5]",
                         "--run-at", "2099-01-31T08:00+00:00")
    assert code == 0, err
    assert query(db, "SELECT run_at, arguments FROM tasks WHERE id = %s", (int(out),))[0] == (
        datetime(2099, 1, 31, 8, tzinfo=UTC), {"args": [1, 2.5], "kwargs": {}})


REFUSED = [
    (["--args", "[1,"], "Error: invalid --args: not JSON (Expecting value at character 4)"),
    (["--args", '{"to": "ann"}'], "Error: --args must be a JSON list of the positional "
     "arguments, such as '[\"ann@example.com\", 2]', not an object"),
    (["--args", '"ann"'], "not a string"),
    (["--kwargs", '["ann"]'], "Error: --kwargs must be a JSON object of the keyword "
     "arguments, such as '{\"subject\": \"Hi\"}', not a list"),
    (["--kwargs", "nul"], "Error: invalid --kwargs: not JSON"),
    (["--args", "[NaN]"], "Error: send_email(): argument 1 is nan, which JSON cannot carry"),
    (["--kwargs", '{"n": 1e999}'], "Error: send_email(): argument 'n' is inf, which JSON "
     "cannot carry"),
    (["--args", '["a\\u0000b"]'], "Error: send_email(): argument 1 contains a NUL "
     "character, which PostgreSQL's jsonb cannot hold"),
    (["--args", '["\\ud800"]'], "Error: send_email(): argument 1 holds a lone surrogate "
     "(half of a UTF-16 pair), which is not valid text"),
    (["--args", "[" + "9" * 5000 + "]"], "Error: invalid --args: Exceeds the limit"),
    (["--args", "[]", "a payload"], "Error: give PAYLOADs or --args/--kwargs, not both"),
]


@pytest.mark.parametrize(("args", "said"), REFUSED, ids=lambda v: str(v)[:30])
def test_enqueue_refuses_a_call_it_cannot_send_in_one_line(db_url: str, db: Any,
                                                           args: list[str], said: str) -> None:
    code, out, err = cli(db_url, "enqueue", "--task", "send_email", *args)
    assert (code, out) == (2, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and said in err, err
    assert rows(db) == []


def test_enqueue_refuses_a_call_without_a_task_or_anything_to_send(db_url: str,
                                                                   db: Any) -> None:
    code, out, err = cli(db_url, "enqueue", "--args", '["ann"]')
    assert (code, out, err) == (
        2, "", "Error: --args and --kwargs call a registered task: name it with --task\n")
    code, out, err = cli(db_url, "enqueue")
    assert (code, out) == (2, "") and err.startswith("Error: give a PAYLOAD"), err
    assert rows(db) == []


def test_enqueue_checks_a_call_against_the_signature_task_modules_registers(
        db_url: str, db: Any, tmp_path: Path) -> None:
    env = app_env(tmp_path, db_url)
    for args, said in ((["--kwargs", '{"subject": "Hi"}'],
                        "send_email(): missing a required argument: 'to'"),
                       (["--args", '["a", "b", "c"]'],
                        "send_email(): too many positional arguments"),
                       (["--kwargs", '{"to": "a", "cc": "b"}'],
                        "send_email(): got an unexpected keyword argument 'cc'")):
        code, out, err = run_cli(["enqueue", "--task", "send_email", *args], env=env)
        assert (code, out, err) == (2, "", f"Error: {said}\n")
    assert rows(db) == []
    # A call it takes, placed as the task declares (queue mail, priority 7).
    code, out, err = run_cli(["enqueue", "--task", "send_email", "--args", '["ann"]'], env=env)
    assert code == 0, err
    [row] = rows(db)
    assert (row["queue"], row["priority"], row["arguments"]) == (
        "mail", 7, {"args": ["ann"], "kwargs": {}})
    # Without TASK_MODULES nothing knows the signature: sent as it is.
    code, out, err = cli(db_url, "enqueue", "--task", "send_email", "--args", '["a", "b", "c"]')
    assert code == 0 and len(rows(db)) == 2, err


# --- taskworker show


def test_show_prints_a_calls_arguments_return_value_and_traceback_readably(
        db_url: str, db: Any, serve: Any, tmp_path: Path) -> None:
    env = app_env(tmp_path, db_url)
    code, ok, err = run_cli(["enqueue", "--task", "send_email", "--args", '["ann@example.com"]',
                             "--kwargs", '{"subject": "Hi \\u00e9"}'], env=env)
    assert code == 0, err
    code, failing, err = run_cli(["enqueue", "--task", "send_email", "--args", '["nobody"]'],
                                 env=env)
    assert code == 0, err
    serve(db_url, env={**FAST, **env})
    wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status IN ('done', 'error')"
                             )[0][0] == 2, WAIT, "both tasks to finish")

    code, out, err = cli(db_url, "show", ok.strip())
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arguments "))
    width = lines[start].index("{")
    assert [line[width:] for line in lines[start:start + 8]] == [
        "{", '  "args": [', '    "ann@example.com"', "  ],", '  "kwargs": {',
        '    "subject": "Hi é"', "  }", "}"]
    assert all(line[:width].strip() == "" for line in lines[start + 1:start + 8])
    value = next(i for i, line in enumerate(lines) if line.startswith("return_value "))
    assert lines[value][width:] == "{" and lines[value + 1][width:] == '  "to": "ann@example.com",'
    assert "{'" not in out  # no Python repr of a dict
    assert re.search(r"^traceback +\(null\)$", out, re.MULTILINE), out

    code, out, err = cli(db_url, "show", failing.strip())
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("traceback "))
    shown = [lines[start][width:]] + [line[width:] for line in lines[start + 1:]]
    end = next(i for i, line in enumerate(shown) if line.startswith("LookupError"))
    assert shown[0] == "Traceback (most recent call last):", out
    assert shown[end] == "LookupError: no mailbox for 'nobody'", out
    assert any('raise LookupError(f"no mailbox for {to!r}")' in line for line in shown[:end])
    assert lines[start + end + 1].startswith("awaited "), out  # no empty line left behind
    assert re.search(r"^return_value +\(null\)$", out, re.MULTILINE), out

    code, out, err = cli(db_url, "show", "--json", ok.strip())
    assert code == 0, err
    shown_json = json.loads(out)
    assert shown_json["arguments"] == {"args": ["ann@example.com"],
                                       "kwargs": {"subject": "Hi é"}}
    assert shown_json["return_value"] == {"to": "ann@example.com", "subject": "Hi é",
                                          "lines": list(range(12))}
    assert shown_json["format"] == 2 and shown_json["traceback"] is None
    shown_json = json.loads(cli(db_url, "show", "--json", failing.strip())[1])
    assert shown_json["traceback"].startswith("Traceback (most recent call last):\n")
    assert shown_json["return_value"] is None


# --- the dashboard


XSS = '<script>alert("x")</script>'


def call(db: Any, task: str, args: list[Any], kwargs: dict[str, Any], status: str = "done",
         **columns: Any) -> int:
    """A format 2 row as a worker leaves it (`return_value` etc. given as JSON values)."""
    values = {"task": task, "format": 2, "status": status,
              "arguments": json.dumps({"args": args, "kwargs": kwargs}), **{
                  k: json.dumps(v) if k == "return_value" else v for k, v in columns.items()}}
    return query(db, f"INSERT INTO tasks ({', '.join(values)}) VALUES "
                     f"({', '.join(['%s'] * len(values))}) RETURNING id",
                 tuple(values.values()))[0][0]


def section(body: str, name: str) -> str:
    """The HTML of the task page's section of column `name`."""
    m = re.search(rf'<section class="value" id="section-{name}">(.*?)</section>', body, re.S)
    assert m, body
    return m.group(1)


def test_the_task_page_shows_a_call_escaped_and_folded_when_long(
        db_url: str, db: Any, tmp_path: Path) -> None:
    traceback = ('Traceback (most recent call last):\n  File "app.py", line 5, in send_email\n'
                 f'    raise ValueError({XSS!r})\nValueError: {XSS}\n')
    short = call(db, "send_email", [XSS], {"subject": "Hi"}, status="error",
                 error=f"ValueError: {XSS}", traceback=traceback)
    long = call(db, "send_email", ["ann"], {}, return_value={"lines": list(range(12))})
    wide = call(db, "send_email", ["x" * 600], {}, return_value="ok")
    with running_dashboard(db_url, tmp_path) as d:
        c = d.client()
        page = c.get(f"/tasks/{short}")
        assert page.status == 200, page
        assert XSS not in page.body and "<script>alert" not in page.body
        arguments = section(page.body, "arguments")
        assert arguments.count("<pre") == 1 and "<details" not in arguments  # short: open
        assert unescape(re.sub(r"<[^>]+>", "", arguments)).strip().endswith(
            json.dumps({"args": [XSS], "kwargs": {"subject": "Hi"}}, indent=2))
        tb = section(page.body, "traceback")
        summary = re.search(r"<summary>(.*?)</summary>", tb, re.S)
        assert summary and f"ValueError: {XSS}" in unescape(summary.group(1)), tb
        assert "4 lines" in summary.group(1)
        assert unescape(re.search(r"<pre>(.*?)</pre>", tb, re.S).group(1)) == traceback  # type: ignore[union-attr]
        assert "(null)" in section(page.body, "return_value")
        for gone in ("payload", "result"):  # a call's row: no sections for text columns
            assert f'id="section-{gone}"' not in page.body
        assert re.search(r'id="field-format">2<', page.body)

        page = c.get(f"/tasks/{long}")
        folded = section(page.body, "return_value")  # 14 lines: folded
        assert '<details id="field-return_value">' in folded, folded
        assert "<details" not in section(page.body, "arguments")
        page = c.get(f"/tasks/{wide}")
        assert '<details id="field-arguments">' in section(page.body, "arguments")  # > 500 chars
        assert '<pre id="field-return_value">' in section(page.body, "return_value")

        raw = c.get(f"/tasks/{long}/raw/return_value")
        assert raw.status == 200 and raw.headers["content-type"].startswith("text/plain")
        assert raw.body == json.dumps({"lines": list(range(12))}, indent=2)
        assert c.get(f"/tasks/{short}/raw/traceback").body == traceback
        assert c.get(f"/tasks/{long}/raw/traceback").status == 404

        listed = c.get("/tasks")
        assert XSS not in listed.body
        row = re.search(rf'<tr data-id="{short}">(.*?)</tr>', listed.body, re.S)
        assert row and '{"args": ["&lt;script&gt;' in row.group(1).replace("&#34;", '"'), row


def test_hidden_arguments_are_never_shown_nor_searchable(db_url: str, db: Any,
                                                         tmp_path: Path) -> None:
    """DASHBOARD_HIDE_ARGUMENTS=send_email: that task's argument values (and a
    text payload, its one argument) appear on no page and match no search, by
    the first window of ids nor through the side index; its error still does;
    another task's arguments are shown and found. A dashboard without the
    setting, on the same rows, shows and finds them all (the control)."""
    done = call(db, "send_email", [SECRET], {"subject": f"about {SECRET}"},
                error="LookupError: no such mailbox", status="error")
    pending = call(db, "send_email", [SECRET], {}, status="pending")
    texty = query(db, "INSERT INTO tasks (task, payload, status) VALUES ('send_email', %s, "
                      "'done') RETURNING id", (f"text {SECRET}",))[0][0]
    other = call(db, "resize", ["photo-visible-42"], {"width": 100})
    # The newest task far above: a search goes below the first window of ids, to
    # the side index, for the finished ones.
    query(db, "INSERT INTO tasks (id, payload, status) VALUES (1000000, 'newest', 'done')")

    def search(c: Client, words: str) -> list[int]:
        page = c.get("/tasks?q=" + words)
        assert page.status == 200, page
        return [int(i) for i in re.findall(r'<tr data-id="(\d+)">', page.body)]

    with running_dashboard(db_url, tmp_path, name="open") as d:
        c = d.client()
        wait_until(lambda: query(db, "SELECT indexed_id FROM taskworker_search_progress")
                   [0][0] == 1000000, WAIT, "the indexer to pass every finished task")
        assert query(db, "SELECT words LIKE %s FROM taskworker_search WHERE task_id = %s",
                     (f"%{SECRET}%", done))[0][0]
        assert search(c, SECRET) == [texty, pending, done]
        assert search(c, "photo-visible") == [other]
        assert SECRET in c.get(f"/tasks/{done}").body

    with running_dashboard(db_url, tmp_path, {"DASHBOARD_HIDE_ARGUMENTS": "send_email"},
                           name="hiding") as d:
        c = d.client()
        pages = {path: c.get(path) for path in (
            f"/tasks/{done}", f"/tasks/{pending}", f"/tasks/{texty}", "/tasks",
            "/tasks?task=send_email", "/tasks?status=error", "/", "/overview/live")}
        for path, page in pages.items():
            assert page.status == 200 and SECRET not in page.body, path
        one = pages[f"/tasks/{done}"]
        names = re.findall(r"<tr><th>(.*?)</th><td class=\"muted\">(.*?)</td></tr>",
                           section(one.body, "arguments"))
        assert names == [("argument 1", HIDDEN), ("subject", HIDDEN)]
        assert "LookupError: no such mailbox" in one.text  # the error is not an argument
        assert HIDDEN in section(pages[f"/tasks/{texty}"].body, "payload")
        listed = pages["/tasks"]
        assert listed.body.count(HIDDEN) == 3 and "photo-visible-42" in listed.body
        for column in ("arguments", "payload"):
            task_id = texty if column == "payload" else done
            raw = c.get(f"/tasks/{task_id}/raw/{column}")
            assert raw.status == 403 and SECRET not in raw.body, raw
        assert c.get(f"/tasks/{other}/raw/arguments").status == 200

        assert search(c, SECRET) == []
        assert search(c, "s3cret") == [] and search(c, "about+s3") == []
        assert search(c, "no+such+mailbox") == [done]
        assert search(c, "photo-visible") == [other]
        # A bulk action's filter matches as the list does: nothing to delete.
        page = c.get(f"/actions/delete?q={SECRET}")
        assert page.status == 200 and SECRET in unescape(page.body)  # (what was typed)
        assert c.confirm(f"/actions/delete?q={SECRET}").status == 303
        assert query(db, "SELECT count(*) FROM tasks WHERE id IN (%s, %s)",
                     (done, texty))[0][0] == 2

    with running_dashboard(db_url, tmp_path, {"DASHBOARD_HIDE_ARGUMENTS": "*"},
                           name="all") as d:
        c = d.client()
        assert "photo-visible-42" not in c.get(f"/tasks/{other}").body
        assert "photo-visible-42" not in c.get("/tasks").body
        assert search(c, "photo-visible") == []
        assert "newest" not in c.get("/tasks/1000000").body  # a task without a name too


# --- the setting


def test_dashboard_hide_arguments_is_read_checked_and_typos_are_named() -> None:
    url = {"DATABASE_URL": "postgresql://u@h/d"}
    assert load(url).dashboard_hide_arguments == ()
    s = load({**url, "DASHBOARD_HIDE_ARGUMENTS": " send_email, billing.charge ,,"})
    assert s.dashboard_hide_arguments == ("send_email", "billing.charge")
    assert s.hides_arguments("send_email") and not s.hides_arguments("resize")
    assert not s.hides_arguments(None)
    every = load({**url, "DASHBOARD_HIDE_ARGUMENTS": "*"})
    assert every.hides_arguments(None) and every.hides_arguments("resize")
    for raw, said in (("send email", "is not a task name"), ("*,send_email", "goes alone"),
                      (",", "expected task names")):
        with pytest.raises(SettingsError, match=f"invalid DASHBOARD_HIDE_ARGUMENTS=.*{said}"):
            load({**url, "DASHBOARD_HIDE_ARGUMENTS": raw})
    assert misspelled({}, {"DASHBOARD_HIDE_ARGUMENT": "x"}) == [
        "DASHBOARD_HIDE_ARGUMENT in the environment is not a setting, ignored: did you mean "
        "DASHBOARD_HIDE_ARGUMENTS?"]


def test_the_dashboard_refuses_a_bad_dashboard_hide_arguments_in_one_line(
        db_url: str) -> None:
    code, out, err = run_cli(["dashboard"], env={"DATABASE_URL": db_url,
                                                 "DASHBOARD_HIDE_ARGUMENTS": "a b"})
    assert code == 2 and err == ("Error: invalid DASHBOARD_HIDE_ARGUMENTS='a b': 'a b' is not "
                                 "a task name (expected send_email,billing.charge or *)\n"), err
