"""Enqueue from application code (in the caller's transaction) and from the shell.

The library half runs in the pytest process with plain blocking psycopg2, as an
application would use it: `taskworker.client` must not need gevent. The shell
half runs `taskworker enqueue` as a subprocess.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg2
import pytest
from invariants import TESTS_DIR, query
from pgserver import UNREACHABLE_URL
from proc import child_env, run_cli

import taskworker
from taskworker import client, registry


@pytest.fixture
def app_conn(db_url: str) -> Iterator[Any]:
    """The application's own connection: not autocommit, as psycopg2 opens it."""
    conn = psycopg2.connect(db_url, connect_timeout=10)
    yield conn
    conn.close()


def payloads_by_id(db: Any) -> list[tuple[int, str]]:
    return query(db, "SELECT id, payload FROM tasks ORDER BY id")  # type: ignore[return-value]


# --- from code


def test_enqueue_appears_only_when_the_application_commits(app_conn: Any, db: Any) -> None:
    with app_conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        cur.execute("INSERT INTO orders VALUES (42)")
        task_id = taskworker.enqueue(cur, "ship order 42")
    assert isinstance(task_id, int)
    assert payloads_by_id(db) == []  # not visible to anyone else before the commit
    app_conn.commit()
    assert query(db, "SELECT id, payload, status, attempts FROM tasks") == [
        (task_id, "ship order 42", "pending", 0)]


def test_enqueue_rolled_back_with_the_application(app_conn: Any, db: Any) -> None:
    ids = taskworker.enqueue_many(app_conn, ["a", "b"])  # on the connection, not a cursor
    one = taskworker.enqueue(app_conn, "c")
    assert len(ids) == 2 and one not in ids
    app_conn.rollback()
    assert payloads_by_id(db) == []
    # The connection is still usable, and a later commit keeps only later work.
    kept = taskworker.enqueue(app_conn, "kept")
    app_conn.commit()
    assert payloads_by_id(db) == [(kept, "kept")]


def test_enqueue_many_keeps_order_across_batches(app_conn: Any, db: Any) -> None:
    payloads = [f"item {n}" for n in range(12_345)]
    ids = client.enqueue_many(app_conn, iter(payloads), batch_size=5000)
    app_conn.commit()
    assert len(ids) == len(payloads) == len(set(ids))
    assert ids == sorted(ids)
    assert payloads_by_id(db) == list(zip(ids, payloads, strict=True))
    assert client.enqueue_many(app_conn, []) == []


def test_enqueue_run_at_and_delay(app_conn: Any, db: Any) -> None:
    when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    at = taskworker.enqueue(app_conn, "at", run_at=when)
    later = taskworker.enqueue(app_conn, "later", run_at=timedelta(hours=1))
    now = taskworker.enqueue(app_conn, "now")
    app_conn.commit()
    rows = dict(query(db, "SELECT id, run_at FROM tasks"))
    assert rows[at] == when
    (db_now,) = query(db, "SELECT now()")[0]
    assert timedelta(minutes=59) < rows[later] - db_now <= timedelta(hours=1)
    assert rows[now] <= db_now


def test_enqueue_refuses_bad_arguments(app_conn: Any, db: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        taskworker.enqueue(app_conn, "x", run_at=datetime(2031, 1, 1))
    with pytest.raises(TypeError, match="payload must be str"):
        taskworker.enqueue(app_conn, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run_at"):
        taskworker.enqueue(app_conn, "x", run_at="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="connection or cursor"):
        taskworker.enqueue(object(), "x")
    # The CLI's words, not psycopg2's raw "A string literal cannot contain NUL";
    # and the batch's good payloads are not sent either.
    with pytest.raises(ValueError, match="^payload contains a NUL character, which "
                                         "PostgreSQL text cannot hold$"):
        taskworker.enqueue_many(app_conn, ["fine", "bad\x00"])
    app_conn.rollback()
    assert payloads_by_id(db) == []


def test_enqueue_in_a_plain_program_without_gevent(db_url: str, db: Any) -> None:
    """`import taskworker; taskworker.enqueue(...)` in an unpatched program."""
    program = (
        "import sys, psycopg2, taskworker\n"
        "conn = psycopg2.connect(sys.argv[1])\n"
        "print(taskworker.enqueue(conn, 'from a script'))\n"
        "conn.commit()\n"
        "assert 'gevent' not in sys.modules, 'taskworker.enqueue imported gevent'\n"
        "assert 'psycogreen' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", program, db_url], env=child_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert payloads_by_id(db) == [(int(done.stdout), "from a script")]


# --- from the shell


def test_enqueue_command_prints_ids(db_url: str, db: Any) -> None:
    code, out, err = run_cli(["enqueue", "first", "second task", "ünïcode ✓"],
                             env={"DATABASE_URL": db_url})
    assert code == 0, err
    ids = [int(line) for line in out.splitlines()]
    assert payloads_by_id(db) == list(zip(ids, ["first", "second task", "ünïcode ✓"], strict=True))
    assert query(db, "SELECT DISTINCT status FROM tasks") == [("pending",)]


def test_enqueue_stdin_hundred_thousand_lines(db_url: str, db: Any) -> None:
    lines = [f"line {n} of the file" for n in range(100_000)]
    code, out, err = run_cli(["enqueue", "-"], env={"DATABASE_URL": db_url},
                             input="\n".join(lines) + "\n", timeout=100)
    assert code == 0, err
    ids = [int(line) for line in out.splitlines()]
    assert len(ids) == 100_000
    assert payloads_by_id(db) == list(zip(ids, lines, strict=True))
    assert err == ""  # no progress bar when stderr is not a terminal


def test_enqueue_stdin_skips_blank_lines_and_crlf(db_url: str, db: Any) -> None:
    code, out, err = run_cli(["enqueue", "--batch-size", "2", "-"], env={"DATABASE_URL": db_url},
                             input="a\r\n\nb\n  c  \n \t \r\n   \nd")
    assert code == 0, err
    # Whitespace-only lines are blank too; other lines are kept exactly.
    assert [p for _, p in payloads_by_id(db)] == ["a", "b", "  c  ", "d"]
    assert len(out.split()) == 4


def test_enqueue_stdin_bad_line_stops_after_committed_batches(db_url: str, db: Any) -> None:
    code, out, err = run_cli(["enqueue", "--batch-size", "2", "-"], env={"DATABASE_URL": db_url},
                             input="a\nb\nc\nd\x00\ne\n")
    assert code == 1
    assert err.strip() == ("Error: line 4 contains a NUL character, which PostgreSQL text "
                           "cannot hold; 2 tasks enqueued before that (their ids are printed), "
                           "the rest were not")
    assert [p for _, p in payloads_by_id(db)] == ["a", "b"]
    assert [int(i) for i in out.split()] == [i for i, _ in payloads_by_id(db)]


def test_enqueue_delay_and_run_at(db_url: str, db: Any) -> None:
    env = {"DATABASE_URL": db_url}
    code, out, err = run_cli(["enqueue", "--delay", "2h", "later"], env=env)
    assert code == 0, err
    code, out2, err = run_cli(["enqueue", "--run-at", "2031-05-06T07:08:09+00:00", "at"], env=env)
    assert code == 0, err
    rows = {p: (run_at, now) for p, run_at, now in
            query(db, "SELECT payload, run_at, now() FROM tasks")}
    run_at, now = rows["later"]
    assert timedelta(hours=1, minutes=59) < run_at - now <= timedelta(hours=2)
    assert rows["at"][0] == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(("args", "message"), [
    (["--delay", "soon", "x"], "Error: invalid --delay='soon': expected a duration"),
    (["--run-at", "tomorrow", "x"], "Error: invalid --run-at='tomorrow': expected an ISO 8601"),
    (["--delay", "1h", "--run-at", "2031-01-01", "x"], "Error: give --run-at or --delay, not both"),
])
def test_enqueue_bad_options_are_one_line(db_url: str, db: Any, args: list[str],
                                          message: str) -> None:
    code, out, err = run_cli(["enqueue", *args], env={"DATABASE_URL": db_url})
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert payloads_by_id(db) == []


def test_enqueue_before_migrate_and_without_database(empty_db_url: str) -> None:
    code, _, err = run_cli(["enqueue", "x"], env={"DATABASE_URL": empty_db_url})
    assert code == 1
    assert err == 'Error: table "tasks" does not exist: run "taskworker migrate" first\n'
    code, _, err = run_cli(["enqueue", "x"], env={"DATABASE_URL": UNREACHABLE_URL,
                                                  "CONNECT_TIMEOUT": "3"})
    assert code == 1
    assert err.startswith("Error: cannot connect to database") and err.count("\n") == 1


# --- named tasks: task, queue, priority


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The enqueue_tasks_for_tests module imported, its tasks registered in this
    process (into a copy of the registry, put back afterwards)."""
    monkeypatch.setattr(registry, "_registry", registry.registered())
    # Imported here, not at the top: an import registers its tasks, and the
    # process's registry would then refuse other tests' unregistered names.
    if "enqueue_tasks_for_tests" in sys.modules:
        return importlib.reload(sys.modules["enqueue_tasks_for_tests"])  # into the copy
    return importlib.import_module("enqueue_tasks_for_tests")


def placed(db: Any, task_id: int) -> tuple[Any, ...]:
    return query(db, "SELECT task, queue, priority, unique_key FROM tasks WHERE id = %s",
                 (task_id,))[0]


def test_enqueue_fills_queue_and_priority_from_the_registry(app_conn: Any, db: Any,
                                                            registered: Any) -> None:
    by_name = taskworker.enqueue(app_conn, "r", task="report")
    by_function = taskworker.enqueue(app_conn, "r", task=registered.report)
    explicit = taskworker.enqueue(app_conn, "r", task="report", queue="urgent", priority=0)
    half = taskworker.enqueue(app_conn, "t", task="tidy")
    unknown = taskworker.enqueue(app_conn, "u", task="not.imported.here", force=True)
    # A typo of a registered name: refused, with the name meant (issue 25, item 7).
    with pytest.raises(ValueError, match="no task 'reprot' is registered in this process; "
                                         "did you mean 'report'?"):
        taskworker.enqueue(app_conn, "r", task="reprot")
    default = taskworker.enqueue(app_conn, "d", queue="side", priority=-3)
    many = taskworker.enqueue_many(app_conn, ["m1", "m2"], task="report", priority=9)
    app_conn.commit()
    assert placed(db, by_name) == placed(db, by_function) == ("report", "reports", 7, None)
    assert placed(db, explicit) == ("report", "urgent", 0, None)  # arguments win, 0 too
    assert placed(db, half) == ("tidy", "chores", 0, None)
    assert placed(db, unknown) == ("not.imported.here", "default", 0, None)
    assert placed(db, default) == (None, "side", -3, None)
    assert [placed(db, i) for i in many] == [("report", "reports", 9, None)] * 2


def test_enqueue_delay_accepts_seconds_and_timedelta(app_conn: Any, db: Any) -> None:
    seconds = taskworker.enqueue(app_conn, "s", delay=90)
    span = taskworker.enqueue(app_conn, "t", task="x", delay=timedelta(hours=2), force=True)
    app_conn.commit()
    rows = dict(query(db, "SELECT id, run_at - now() FROM tasks"))
    assert timedelta(seconds=85) < rows[seconds] <= timedelta(seconds=90)
    assert timedelta(hours=1, minutes=59) < rows[span] <= timedelta(hours=2)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"task": ""}, ValueError, "task '' is not a valid name"),
    ({"task": "no spaces"}, ValueError, "task 'no spaces' is not a valid name"),
    ({"task": print}, TypeError, "task must be a task name or a function decorated with "
                                 "@taskworker.task, not builtin_function_or_method"),
    ({"queue": "-x"}, ValueError, "queue '-x' is not a valid name"),
    ({"priority": "1"}, TypeError, "priority must be an int, not str"),
    ({"priority": True}, TypeError, "priority must be an int, not bool"),
    ({"priority": 2**31}, ValueError, "priority 2147483648 is out of range"),
    ({"delay": -1}, ValueError, "delay must not be negative"),
    ({"delay": "5s"}, TypeError, "delay must be a timedelta or seconds, not str"),
    ({"delay": 5, "run_at": timedelta(1)}, ValueError, "give run_at or delay, not both"),
])
def test_enqueue_refuses_bad_named_options(app_conn: Any, db: Any, options: dict[str, Any],
                                           error: type[Exception], message: str) -> None:
    for call in (lambda: taskworker.enqueue(app_conn, "x", **options),
                 lambda: taskworker.enqueue_many(app_conn, ["x"], **options),
                 lambda: client.enqueue_unique(app_conn, "x", "k", **options)):
        with pytest.raises(error) as raised:
            call()
        assert str(raised.value).startswith(message)
    app_conn.rollback()
    assert payloads_by_id(db) == []


def test_enqueue_command_named_options(db_url: str, db: Any) -> None:
    env = {"DATABASE_URL": db_url}
    code, out, err = run_cli(["enqueue", "--task", "resize", "--queue", "images", "--priority",
                              "-5", "--run-at", "2031-05-06T07:08:09+00:00", "a", "b"], env=env)
    assert code == 0, err
    # Without TASK_MODULES the name cannot be checked: one line says so.
    assert err == ("Warning: task 'resize' could not be checked (set TASK_MODULES or --tasks "
                   "to check its name, queue and priority)\n")
    ids = [int(line) for line in out.split()]
    rows = query(db, "SELECT id, task, queue, priority, unique_key, run_at FROM tasks "
                     "ORDER BY id")
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert rows == [(i, "resize", "images", -5, None, when) for i in ids]
    # A unique key: inserted once; then the live task's id and a line saying so.
    args = ["enqueue", "--task", "invoice", "--delay", "1h", "--unique-key", "invoice-42", "42"]
    unchecked = ("Warning: task 'invoice' could not be checked (set TASK_MODULES or --tasks "
                 "to check its name, queue and priority)\n")
    code, out, err = run_cli(args, env=env)
    assert (code, err) == (0, unchecked)
    first = int(out)
    assert placed(db, first) == ("invoice", "default", 0, "invoice-42")
    assert run_cli(args, env=env) == (
        0, f"{first}\n",
        unchecked + f"Task {first} already pending with unique key 'invoice-42'; nothing "
                    "inserted\n")
    query(db, "UPDATE tasks SET status = 'in_progress' WHERE id = %s", (first,))
    code, out, err = run_cli(args, env=env)
    assert (code, out) == (0, f"{first}\n") and "already running" in err
    query(db, "UPDATE tasks SET status = 'done' WHERE id = %s", (first,))
    code, out, err = run_cli(args, env=env)
    assert (code, err) == (0, unchecked) and int(out) > first
    assert query(db, "SELECT count(*) FROM tasks WHERE unique_key = 'invoice-42'") == [(2,)]
    # show prints the new columns.
    code, out, err = run_cli(["show", str(first)], env=env)
    assert code == 0, err
    shown = dict(line.split(None, 1) for line in out.splitlines())
    assert {k: shown[k] for k in ("task", "queue", "priority", "unique_key",
                                  "cancel_requested_at")} == {
        "task": "invoice", "queue": "default", "priority": "0", "unique_key": "invoice-42",
        "cancel_requested_at": "(null)"}


def test_enqueue_command_fills_from_task_modules(db_url: str, db: Any) -> None:
    """With TASK_MODULES set, `enqueue --task` places a task as the application's
    enqueue would: the declared queue and priority, unless the options say."""
    env = {"DATABASE_URL": db_url, "PYTHONPATH": str(TESTS_DIR),
           "TASK_MODULES": "enqueue_tasks_for_tests"}
    code, out, err = run_cli(["enqueue", "--task", "report", "r"], env=env)
    assert code == 0, err
    code, out2, err = run_cli(["enqueue", "--task", "report", "--priority", "1", "r"], env=env)
    assert code == 0, err
    assert [placed(db, int(out)), placed(db, int(out2))] == [
        ("report", "reports", 7, None), ("report", "reports", 1, None)]
    # A misspelt name: refused with the name meant; --force insists (issue 25, item 7).
    before = query(db, "SELECT count(*) FROM tasks")
    assert run_cli(["enqueue", "--task", "reprot", "r"], env=env) == (
        2, "", "Error: no task 'reprot' is registered in this process; did you mean "
               "'report'? (--force enqueues it anyway, for a process that has it)\n")
    assert query(db, "SELECT count(*) FROM tasks") == before
    code, out, err = run_cli(["enqueue", "--task", "reprot", "--force", "r"], env=env)
    assert (code, err) == (0, "")
    assert placed(db, int(out)) == ("reprot", "default", 0, None)
    # --tasks does what TASK_MODULES does.
    code, out, err = run_cli(["enqueue", "--tasks", "enqueue_tasks_for_tests", "--task",
                              "report", "r"],
                             env={"DATABASE_URL": db_url, "PYTHONPATH": str(TESTS_DIR)})
    assert (code, err) == (0, "") and placed(db, int(out)) == ("report", "reports", 7, None)
    code, _, err = run_cli(["enqueue", "--task", "report", "r"],
                           env={**env, "TASK_MODULES": "no_such_module_here"})
    assert code == 2
    assert err.startswith("Error: cannot load TASK_MODULES module 'no_such_module_here'")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--unique-key", "k", "a", "b"], "Error: --unique-key takes exactly one PAYLOAD (not -)"),
    (["--unique-key", "k", "-"], "Error: --unique-key takes exactly one PAYLOAD (not -)"),
    (["--unique-key", "", "a"], "Error: unique_key must be a non-empty text"),
    (["--queue", "a b", "x"], "Error: queue 'a b' is not a valid name"),
    (["--task", "a/b", "x"], "Error: task 'a/b' is not a valid name"),
])
def test_enqueue_bad_named_options_are_one_line(db_url: str, db: Any, args: list[str],
                                                message: str) -> None:
    code, out, err = run_cli(["enqueue", *args], env={"DATABASE_URL": db_url})
    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1
    assert payloads_by_id(db) == []


def test_an_unchecked_name_warns_once_in_a_process_that_registered_no_task() -> None:
    """A producer that imported no task cannot check a name: one warning per name,
    pointing at the application's line (issue 25, item 7). Run in a fresh process:
    this one registered the suite's tasks."""
    code = ("import warnings, taskworker\n"
            "from taskworker.client import UnknownTaskWarning\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    for _ in range(3):\n"
            "        try:\n"
            "            taskworker.enqueue(object(), 'p', task='send_email')\n"
            "        except TypeError:\n"  # (the object is no connection: nothing sent)
            "            pass\n"
            "w = [x for x in seen if x.category is UnknownTaskWarning]\n"
            "print(len(w), w[0].filename, w[0].lineno, str(w[0].message))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    count, filename, line, message = done.stdout.split(" ", 3)
    assert (count, filename, line) == ("1", "<string>", "7")
    assert message.startswith("taskworker: task 'send_email' could not be checked")
