"""Rolling deploys (part 14, issue item 7): processes of the previous version run
beside the new one, and none of them claims a row it cannot run as intended.

The previous version is git 5c69215 (migrations up to 009), built into a wheel
and installed into a virtualenv that reuses this interpreter's dependencies
(offline: only the wheel is installed). It migrates a fresh database and serves
it; the new version migrates the same database while the old serve runs and
enqueues text rows (format 1, which the old process keeps running), calls with
JSON arguments (format 2) and, by SQL, rows of a made-up later format 3. The old
version's claims know nothing of `format`: migration 012's trigger drops the
ones that would take a row of a later format (they do not raise `fence`).

An audit trigger (named to fire before tasks_keep_format) records every claim
attempt, dropped or not: the tests show that the old claims did reach the rows
of later formats and were turned away, not merely that they never got there.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from invariants import query, wait_until
from proc import ServeProcess, child_env, cli, importable
from venvs import REPO, run

from taskworker.store import tasks
from taskworker.store.database import Direct
from taskworker.store.tasks import Served

OLD = "5c69215"  # the previous version: migrations 001-009, no fence, no format

# Every claim attempt, before tasks_keep_format decides (BEFORE triggers fire
# in name order): which row, its format, who claimed, whether the claim raised
# the fence (the new version's claims do, 5c69215's do not).
CLAIM_AUDIT = """
CREATE TABLE claim_attempts (id bigint, format smallint, holder text, fenced boolean);
CREATE FUNCTION audit_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO claim_attempts VALUES (OLD.id, OLD.format, NEW.locked_by,
                                       NEW.fence <> OLD.fence);
    RETURN NEW;
END $$;
CREATE TRIGGER a_audit_claim BEFORE UPDATE ON tasks FOR EACH ROW
    WHEN (OLD.status = 'pending' AND NEW.status = 'in_progress')
    EXECUTE FUNCTION audit_claim();
CREATE TABLE fence_at_insert (id bigint PRIMARY KEY, fence bigint);
CREATE FUNCTION audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fence_at_insert VALUES (NEW.id, NEW.fence);
    RETURN NULL;
END $$;
CREATE TRIGGER a_audit_insert AFTER INSERT ON tasks FOR EACH ROW
    EXECUTE FUNCTION audit_insert();
"""

# The old serve's application: send_email as 5c69215 calls a named task (one
# text argument), and a default handler; each records what it got.
OLD_APP = '''
import json
import re
import os

import taskworker


def record(kind, payload):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps([kind, payload]) + "\\n")


@taskworker.task("send_email")
def send_email(payload):
    record("send_email", payload)
    return "sent"


def default(payload):
    record("default", payload)
    return "done"
'''

# The new version's application: send_email called with JSON arguments.
NEW_APP = '''
import taskworker


@taskworker.task("send_email")
def send_email(to, subject=""):
    return {"to": to, "subject": subject}


def default(payload):
    return payload.upper()
'''

# What the new version's application enqueues, in one transaction: calls of
# send_email (one ahead of everything at priority 5) and text rows, one of them
# for send_email. Prints {label: id}.
ENQUEUE = '''
import json
import re
import os

import psycopg2
import taskworker
from mail import send_email

with psycopg2.connect(os.environ["DATABASE_URL"]) as conn:
    ids = {
        "call first": send_email.options(priority=5).enqueue(conn, "cat@example.com",
                                                             subject="First"),
        "call ann": send_email.enqueue(conn, "ann@example.com", subject="Hi"),
        "text 1": taskworker.enqueue(conn, "text 1"),
        "call bob": send_email.enqueue(conn, "bob@example.com"),
        "text 2": taskworker.enqueue(conn, "text 2"),
        "text send_email": taskworker.enqueue(conn, "text for send_email", task="send_email"),
    }
print(json.dumps(ids))
'''

LATER_FORMAT = """
INSERT INTO tasks (payload, task, arguments, format, priority)
VALUES ('format 3, no name', NULL, NULL, 3, 5),
       (NULL, 'send_email', '{"to": "dan@example.com"}', 3, 0)
RETURNING id
"""


def commit_in_clone(ref: str) -> bool:
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{ref}^{{commit}}"],
                           capture_output=True, check=False)
    return found.returncode == 0


def setuptools_builds_it() -> bool:
    """Can this interpreter's setuptools build 5c69215 without build isolation?
    (Its pyproject.toml asks for setuptools>=77.)"""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a virtualenv holding the wheel of git 5c69215, its
    dependencies those of this interpreter (a .pth file names its site-packages)."""
    if not commit_in_clone(OLD):
        pytest.skip(f"git {OLD} (the previous version) is not in this clone "
                    "(a shallow clone?): fetch the history to run this test")
    root = tmp_path_factory.mktemp("previous")
    source, dist, venv = root / "source", root / "dist", root / "venv"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    isolation = ["--no-build-isolation"] if setuptools_builds_it() else []
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", dist,
         source])
    (wheel,) = dist.glob("taskworker-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                         "['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "taskworker_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: through the .pth, pip sees this code's taskworker (the
    # same version number) and would install nothing; the old wheel goes into
    # the venv's own site-packages, which comes first on its path.
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-index", "--ignore-installed", wheel])
    found = subprocess.run([python, "-c", "import taskworker; print(taskworker.__file__)"],
                           capture_output=True, text=True, check=True, cwd=root).stdout
    assert found.startswith(str(venv)), f"the old venv imports taskworker from {found}"
    return python


def old_cli(python: Path, db_url: str, *args: str, cwd: Path) -> str:
    """`taskworker *args` of the old version (cwd: never the checkout, whose
    taskworker `python -m` would import first); its output."""
    done = subprocess.run([python, "-m", "taskworker", *args], cwd=cwd,
                          env=child_env({"DATABASE_URL": db_url}), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"old taskworker {args}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def new_cli(db_url: str, *args: str) -> str:
    code, out, err = cli(db_url, *args)
    assert code == 0, f"taskworker {args}: exit {code}\n{out}{err}"
    return out + err


@pytest.fixture
def previous_db(empty_db_url: str, old_python: Path, tmp_path: Path) -> str:
    """A fresh database migrated by the old version (001-009)."""
    out = old_cli(old_python, empty_db_url, "migrate", cwd=tmp_path)
    assert "009" in out, out
    return empty_db_url


@pytest.fixture
def conn(previous_db: str) -> Iterator[Any]:
    """An autocommit connection to `previous_db`, for setting up and asserting."""
    connection = psycopg2.connect(previous_db, connect_timeout=10)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    """Serve processes a test starts itself: killed at teardown if still running."""
    started: list[ServeProcess] = []
    yield started
    for p in started:
        p.kill()


def claim_attempts(conn: Any) -> int:
    return query(conn, "SELECT count(*) FROM claim_attempts")[0][0]


def rows(db: Any, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The rows `ids` (inserted after CLAIM_AUDIT), with how far their fence was
    raised since the insert (`raised`: a fence starts at random, migration 020)."""
    names = ("status", "attempts", "raised", "locked_by", "format", "result", "return_value")
    found = query(db, "SELECT t.id, t.status, t.attempts, t.fence - f.fence, t.locked_by, "
                      "t.format, t.result, t.return_value FROM tasks AS t "
                      "JOIN fence_at_insert AS f USING (id) WHERE t.id = ANY(%s)",
                  (list(ids),))
    assert len(found) == len(set(ids)), (found, ids)
    return {r[0]: dict(zip(names, r[1:], strict=True)) for r in found}


def untouched(row: dict[str, Any]) -> bool:
    return (row["status"], row["attempts"], row["raised"], row["locked_by"]) == \
        ("pending", 0, 0, None)


def attempts_by(db: Any, ids: Sequence[int], fenced: bool) -> set[int]:
    """The rows among `ids` that a claim raising the fence (`fenced`) or not tried."""
    return {r[0] for r in query(db, "SELECT id FROM claim_attempts WHERE id = ANY(%s) "
                                    "AND fenced = %s", (list(ids), fenced))}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_previous_version_serves_on_while_the_new_one_migrates_and_enqueues_calls(
        previous_db: str, conn: Any, old_python: Path, processes: list[ServeProcess],
        tmp_path: Path) -> None:
    db_url = previous_db
    record = tmp_path / "record.jsonl"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    old_env = {"DATABASE_URL": db_url, "RECORD": str(record), "TASK_MODULES": "old_mail",
               "TASK_HANDLER": "old_mail:default", "WORKER_COUNT": "8",
               "FETCH_INTERVAL": "0.2", "LOG_LEVEL": "INFO",
               **importable(tmp_path / "old_app", {"old_mail": OLD_APP})}
    old = ServeProcess([], old_env, str(cwd), str(tmp_path / "old-serve.log"),
                       command=[str(old_python), "-m", "taskworker", "serve"])
    processes.append(old)

    def recorded() -> list[list[str]]:
        return [json.loads(line) for line in record.read_text().splitlines()] \
            if record.exists() else []

    # The old process serves before the new migration...
    query(conn, "INSERT INTO tasks (payload) VALUES ('before the migration')")
    wait_until(lambda: ["default", "before the migration"] in recorded(), 30,
               "the old serve to run a task", [old], fail_on_exit=True)
    # ... and on while the new version migrates the database under it.
    out = new_cli(db_url, "migrate")
    assert "012" in out, out
    assert old.proc.poll() is None, old.output()
    query(conn, CLAIM_AUDIT)

    new_env = {**importable(tmp_path / "new_app", {"mail": NEW_APP}), "DATABASE_URL": db_url}
    enqueued = subprocess.run([sys.executable, "-c", ENQUEUE], env=child_env(new_env),
                              cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert enqueued.returncode == 0, enqueued.stderr
    ids: dict[str, int] = json.loads(enqueued.stdout)
    later = [r[0] for r in query(conn, LATER_FORMAT)]
    texts = [ids["text 1"], ids["text 2"], ids["text send_email"]]
    calls = [ids["call first"], ids["call ann"], ids["call bob"]]
    assert {i: r["format"] for i, r in rows(conn, calls + texts + later).items()} == \
        {**dict.fromkeys(calls, 2), **dict.fromkeys(texts, 1), **dict.fromkeys(later, 3)}

    # The old process runs the text rows, with its own functions...
    wait_until(lambda: all(r["status"] == "done" for r in rows(conn, texts).values()), 30,
               "the old serve to run the text rows", [old], fail_on_exit=True)
    assert ["default", "text 1"] in recorded() and ["default", "text 2"] in recorded()
    assert ["send_email", "text for send_email"] in recorded()
    # ... and its claims reached the rows of formats 2 and 3 (ahead of the text
    # rows in its claim's order) but never took one: the trigger dropped them.
    wait_until(lambda: attempts_by(conn, calls + later, fenced=False) == set(calls + later),
               30, "the old serve's claims to try every row of a later format", [old])
    tried = claim_attempts(conn)
    query(conn, "SELECT pg_notify('taskworker_tasks', '')")  # one more claim, at least
    wait_until(lambda: claim_attempts(conn) > tried, 30, "another claim of the old serve",
               [old])
    assert all(untouched(r) for r in rows(conn, calls + later).values()), rows(conn, calls + later)
    assert [kind for kind, payload in recorded() if payload is None] == []
    for task_id in calls + later:
        assert not re.search(rf"(?i)task ID: {task_id}\b", old.output()), old.output()
    assert attempts_by(conn, calls + later, fenced=True) == set()

    # The deploy goes on: the old process stops, a new one runs the calls with
    # their arguments and leaves format 3 alone.
    old.signal(signal.SIGTERM)
    assert old.wait(30) == 0, old.output()
    new = ServeProcess(["--tasks", "mail"], {**new_env, "TASK_HANDLER": "mail:default",
                                             "FETCH_INTERVAL": "0.2"},
                       str(cwd), str(tmp_path / "new-serve.log"))
    processes.append(new)
    wait_until(lambda: all(r["status"] == "done" for r in rows(conn, calls).values()), 30,
               "the new serve to run the calls", [new], fail_on_exit=True)
    found = rows(conn, calls)
    assert found[ids["call first"]]["return_value"] == {"to": "cat@example.com",
                                                         "subject": "First"}
    assert found[ids["call ann"]]["return_value"] == {"to": "ann@example.com", "subject": "Hi"}
    assert found[ids["call bob"]]["return_value"] == {"to": "bob@example.com", "subject": ""}
    assert all(r["attempts"] == 1 for r in found.values())
    (behind,) = query(conn, "INSERT INTO tasks (payload) VALUES ('behind format 3') "
                            "RETURNING id")[0]
    wait_until(lambda: rows(conn, [behind])[behind]["status"] == "done", 30,
               "the new serve to run a text row behind the format 3 rows", [new])
    assert all(untouched(r) for r in rows(conn, later).values()), rows(conn, later)
    assert attempts_by(conn, later, fenced=True) == set()
    new.signal(signal.SIGTERM)
    assert new.wait(30) == 0, new.output()


# Every statement of the old version that takes pending rows, sent by the old
# code's own store functions (in the old virtualenv) as holder "old": the
# discovering claim (one ordered scan of a queue of known names), the claim by
# name (a queue holding a name with max_running: slots taken in the same
# statement), claim_shares, claim_shares_completing (with the outcome of a row
# it holds) and claim_alone. Prints {statement: [ids claimed]}.
OLD_CLAIMS = '''
import json
import os

import psycopg2
from taskworker.store import tasks
from taskworker.store.completion import OutcomeWrite
from taskworker.store.database import Direct


class Connection(Direct):
    def query(self, statement, params=None, **_):
        return super().query(statement, params)


conn = psycopg2.connect(os.environ["DATABASE_URL"])
conn.autocommit = True
db = Connection(conn)
plain = tasks.Served(None, ["", "send_email"], {}, [])
limited = tasks.Served(["limits"], ["limited"], {}, ["limited"])
tasks.ensure_slots(db, {"limited": 2})
got = {}


def took(claim):
    return [row.task.id for row in claim.rows]


got["claim"] = took(tasks.claim(db, holder="old", limit=10, lease=60, served=plain))
got["claim by name"] = took(tasks.claim(db, holder="old", limit=10, lease=60, served=limited))
got["claim again by name"] = took(tasks.claim(db, holder="old", limit=10, lease=60,
                                              served=limited))
pairs = [("default", ""), ("default", "send_email")]
got["claim_shares"] = took(tasks.claim(db, holder="old", limit=10, lease=60, served=plain,
                                       pairs=pairs))
done = OutcomeWrite(got["claim"][0], 1, "done", "ok", None, None, False)
claim = tasks.claim_shares_completing(db, holder="old", lease=60, names=plain.names,
                                      shared={"default": 10}, inline_bytes=2**62,
                                      writes=[done])
got["claim_shares_completing"] = took(claim)
got["written"] = sorted(i for i, _ in claim.written)
got["claim_alone"] = took(tasks.claim(db, holder="old", limit=1, lease=60, served=plain,
                                      alone=True))
print(json.dumps(got))
'''


def add(conn: Any, count: int, fmt: int, task: str | None = None, queue: str = "default",
        priority: int = 0, run_alone: bool = False) -> list[int]:
    """`count` pending rows of format `fmt` (a call for 2 and 3, a text payload for 1)."""
    payload, arguments = ("text", None) if fmt == 1 else (None, '{"args": [1], "kwargs": {}}')
    return [r[0] for r in query(
        conn, "INSERT INTO tasks (payload, arguments, format, task, queue, priority, "
              "run_alone) SELECT %s, %s::jsonb, %s, %s, %s, %s, %s "
              "FROM generate_series(1, %s) RETURNING id",
        (payload, arguments, fmt, task, queue, priority, run_alone, count))]


def test_no_claim_of_the_previous_version_takes_a_row_of_a_later_format(
        previous_db: str, conn: Any, old_python: Path, tmp_path: Path) -> None:
    new_cli(previous_db, "migrate")
    query(conn, CLAIM_AUDIT)
    ahead = [*add(conn, 3, 2, "send_email", priority=5), *add(conn, 1, 3, priority=5),
             *add(conn, 2, 2, "limited", "limits", priority=5),
             *add(conn, 1, 2, "send_email", run_alone=True)]
    text = [*add(conn, 1, 1), *add(conn, 1, 1, "send_email"), *add(conn, 20, 1),
            *add(conn, 1, 1, "limited", "limits")]
    out = subprocess.run([old_python, "-c", OLD_CLAIMS],
                         env=child_env({"DATABASE_URL": previous_db}), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    written = got.pop("written")
    claimed = [i for ids in got.values() for i in ids]
    assert claimed and set(claimed) <= set(text), got
    assert written == [got["claim"][0]]
    # Each statement reached the rows of later formats (ahead in its order) and
    # was turned away: untouched, never in progress.
    assert attempts_by(conn, ahead, fenced=False) == set(ahead)
    assert all(untouched(r) for r in rows(conn, ahead).values()), rows(conn, ahead)
    # The claim by name took a concurrency slot for each limited row it picked
    # in the same statement: the trigger gave back those of the rows it dropped
    # (else they stayed leased to a claim that holds nothing, LEASE_SECONDS long).
    assert got["claim by name"] == []  # (its picks were the two rows of format 2)
    assert query(conn, "SELECT task_id, locked_by FROM taskworker_slots "
                       "WHERE locked_by IS NOT NULL") == []


def test_the_new_version_leaves_a_row_of_a_later_format_alone(db: Any) -> None:
    query(db, CLAIM_AUDIT)
    later = [*add(db, 1, 3, priority=5), *add(db, 1, 3, "send_email", priority=5),
             *add(db, 1, 3, "limited", "limits", priority=5), *add(db, 1, 3, run_alone=True)]
    call, text, limited_text = (*add(db, 1, 2, "send_email"), *add(db, 1, 1),
                                *add(db, 1, 1, "limited", "limits"))
    store = Direct(db)
    tasks.ensure_slots(store, {"limited": 1})
    plain = Served(None, ["", "send_email"], {}, [])
    limited = Served(["limits"], ["limited"], {}, ["limited"])

    def claim(served: Served, **how: Any) -> dict[int, int]:
        got = tasks.claim(store, holder="new", limit=10, lease=60, served=served, **how)
        return {row.task.id: row.task.format for row in got.rows}

    # Not a task to run alone for this version: else it would drain at every
    # rescue check and claim nothing.
    assert not tasks.alone_waiting(store, plain)
    assert claim(plain, alone=True) == {}
    assert claim(limited) == {limited_text: 1}  # (the claim by name, with its slot)
    assert claim(plain) == {call: 2, text: 1}  # (one ordered scan of the queue)
    query(db, "UPDATE tasks SET status = 'pending', locked_by = NULL WHERE id = ANY(%s)",
          ([call, text],))
    assert claim(plain, pairs=[("default", ""), ("default", "send_email")]) == \
        {call: 2, text: 1}  # (claim_shares)
    assert all(untouched(r) for r in rows(db, later).values()), rows(db, later)
    assert attempts_by(db, later, fenced=True) | attempts_by(db, later, fenced=False) == set()
