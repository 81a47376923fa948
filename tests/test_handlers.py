"""Your own handlers: TASK_HANDLER / --handler naming any importable function,
the task context it may ask for, what ends up in the table, and the one line a
handler that cannot be loaded gets.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from docs_samples import steps
from invariants import insert_tasks, query
from proc import ServeFactory, ServeProcess, importable, run_cli

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
HANDLER_SETTINGS = "task_timeout,max_retries,task_min_seconds,task_max_seconds,task_failure_rate"

HANDLERS = '''\
"""Handlers for test_handlers.py, imported by `taskworker serve` from PYTHONPATH."""


def shout(payload):
    return payload.upper()


def describe(payload, task):
    import dataclasses
    settings = ",".join(f.name for f in dataclasses.fields(task.settings))
    secret = "postgres" in repr(task) or "database_url" in repr(task)
    return (f"{payload}|id={task.id}|attempt={task.attempt}|worker={task.worker}"
            f"|settings={settings}|url={secret}")


class Refused(Exception):
    pass


def refuse(payload):
    raise Refused(f"will not do {payload!r}")


not_a_function = 42
'''



@pytest.fixture
def handler_dir(tmp_path: Path) -> dict[str, str]:
    modules = {"my_handlers": HANDLERS,
               "broken_on_import": "raise RuntimeError('no config here')\n"}
    return {**importable(tmp_path / "mods", modules), "FETCH_INTERVAL": "0.2"}


def rows(db: Any) -> dict[int, tuple[str, str | None, str | None, int]]:
    with db.cursor() as cur:
        cur.execute("SELECT id, status, result, error, attempts FROM tasks")
        return {r[0]: tuple(r[1:]) for r in cur.fetchall()}


def run_until_finished(p: ServeProcess, ids: list[int]) -> str:
    for task_id in ids:
        p.wait_for(rf"Task ID: {task_id} processed with status: (done|error)", timeout=30)
    p.signal(signal.SIGINT)
    assert p.wait(30) == 0
    return p.output()


def test_handler_named_by_environment(db_url: str, db: Any, serve: ServeFactory,
                                      handler_dir: dict[str, str]) -> None:
    ids = insert_tasks(db, ["quiet please", "naïve ✓"])
    p = serve(db_url, env={**handler_dir, "TASK_HANDLER": "my_handlers:shout"})
    run_until_finished(p, ids)
    assert rows(db) == {ids[0]: ("done", "QUIET PLEASE", None, 1),
                        ids[1]: ("done", "NAÏVE ✓", None, 1)}


def test_handler_gets_the_task_context(db_url: str, db: Any, serve: ServeFactory,
                                       handler_dir: dict[str, str]) -> None:
    ids = insert_tasks(db, ["a", "b"])
    p = serve(db_url, env={**handler_dir, "WORKER_COUNT": "1"},
              args=["--handler", "my_handlers:describe"])
    run_until_finished(p, ids)
    got = rows(db)
    for task_id, payload in zip(ids, "ab", strict=True):
        # The settings a handler may need, and nothing of the database's URL.
        assert got[task_id] == ("done", f"{payload}|id={task_id}|attempt=1|worker=1"
                                f"|settings={HANDLER_SETTINGS}|url=False", None, 1)


def test_handler_exception_is_stored_as_type_and_message(db_url: str, db: Any,
                                                         serve: ServeFactory,
                                                         handler_dir: dict[str, str]) -> None:
    ids = insert_tasks(db, ["the dishes"])
    p = serve(db_url, env={**handler_dir, "TASK_HANDLER": "my_handlers:refuse"})
    out = run_until_finished(p, ids)
    assert rows(db) == {ids[0]: ("error", None, "Refused: will not do 'the dishes'", 1)}
    assert f"Task ID: {ids[0]} processed with status: error" in out
    # The traceback is stored, and logged after the failure's line, each of its
    # lines marked with the task's id: never a bare traceback of the worker.
    stored = query(db, "SELECT traceback FROM tasks WHERE id = %s", (ids[0],))[0][0]
    assert re.search(r'my_handlers\.py", line \d+, in refuse\n', stored)
    marked = re.compile(rf"\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d Task ID: {ids[0]} \| ")
    traced = [line for line in out.splitlines() if "Traceback" in line or 'File "' in line]
    assert traced and all(marked.match(line) for line in traced), traced


@pytest.mark.parametrize(("path", "reason"), [
    ("no_such_module:run", "ModuleNotFoundError"),
    ("my_handlers:missing", "AttributeError"),
    ("broken_on_import:run", "RuntimeError: no config here"),
    ("my_handlers:not_a_function", "not callable"),
])
def test_handler_that_cannot_be_loaded_stops_serve(db_url: str, db: Any,
                                                   handler_dir: dict[str, str],
                                                   path: str, reason: str) -> None:
    ids = insert_tasks(db, ["untouched"])
    code, out, err = run_cli(["serve"], env={**handler_dir, "DATABASE_URL": db_url,
                                             "TASK_HANDLER": path}, timeout=30)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"TASK_HANDLER='{path}'" in lines[0] and reason in lines[0]
    assert "Traceback" not in out + err
    assert rows(db) == {ids[0]: ("pending", None, None, 0)}  # nothing was claimed


def test_handler_path_must_look_like_module_colon_function(db_url: str) -> None:
    code, out, err = run_cli(["serve"], env={"DATABASE_URL": db_url,
                                             "TASK_HANDLER": "just-a-name"}, timeout=30)
    assert code == 2
    assert err.strip() == ("Error: invalid TASK_HANDLER='just-a-name': "
                           "expected package.module:function")


def test_the_tutorials_tasks_as_the_tutorial_runs_them(db_url: str, tmp_path: Path) -> None:
    """The tutorial's steps 7 to 9, run as a user runs them: its files written into
    the current folder (myapp/tasks.py, order.py), its serve block run as it stands
    (the `taskworker` console script with --tasks naming myapp.tasks; no PYTHONPATH:
    the console script must find myapp in the current folder by itself), and
    `python order.py` printing what the tutorial shows."""
    text = TUTORIAL.read_text()
    run = re.search(r"```sh\n(taskworker serve --tasks myapp\.tasks)\n```", text)
    call = re.search(r"<!-- run -->\n```sh\n(python order\.py)\n```\n\n<!-- output -->\n"
                     r"```\n(.*?)\n```", text, re.S)
    files = {step.path: step.code for step in steps(TUTORIAL) if step.kind == "file"}
    assert run and call and {"myapp/tasks.py", "order.py"} <= set(files), \
        "the tutorial's application changed: update this test"
    bindir = Path(sys.executable).parent
    if not (bindir / "taskworker").exists():
        pytest.skip(f"taskworker is not installed as a console script in {bindir}")
    app = tmp_path / "app"
    for path, code in files.items():
        (app / path).parent.mkdir(parents=True, exist_ok=True)
        (app / path).write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DATABASE_URL=db_url, PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               FETCH_INTERVAL="0.2", PYTHONUNBUFFERED="1")
    p = ServeProcess([], env, str(app), str(tmp_path / "serve.log"),
                     command=["bash", "-c", run.group(1)])  # bash execs the one command
    try:
        p.wait_for("Starting worker 1")
        done = subprocess.run(["bash", "-c", call.group(1)], cwd=app, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        p.kill()
    assert done.returncode == 0, done.stderr + p.output()
    assert done.stdout.strip() == call.group(2).strip()
    assert "ModuleNotFoundError" not in p.output()
