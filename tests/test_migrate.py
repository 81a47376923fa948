"""`taskworker migrate`: the schema it creates, running it again, two at once, and
what a later migration changed.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from invariants import add_task
from pgserver import UNREACHABLE_URL
from proc import CLI, child_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
LINE = r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} "  # the log's time stamp



def _query(url: str, statement: str, params: tuple | None = None) -> list[tuple]:
    with closing(psycopg2.connect(url, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def _recorded(url: str) -> list[tuple[int, str]]:
    return _query(url, "SELECT version, name FROM schema_migrations ORDER BY version")


def test_migrate_creates_the_schema(empty_db_url: str) -> None:
    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": empty_db_url})
    assert code == 0, (out, err)
    assert err == ""
    for message in ("Connecting to database: ", "Running database migration...",
                    "Migration completed successfully"):
        assert re.search(LINE + re.escape(message), out, re.MULTILINE), out
    assert out.index("Running database migration...") < out.index(
        "Migration completed successfully")

    found = _query(empty_db_url,
                   "SELECT column_name, data_type, is_nullable, column_default"
                   " FROM information_schema.columns"
                   " WHERE table_schema = 'public' AND table_name = 'tasks'")
    columns = {name: (dtype, nullable, default) for name, dtype, nullable, default in found}
    assert columns["id"][0] == "bigint" and columns["id"][1] == "NO"
    assert columns["payload"][0] == "text"
    assert columns["status"][:2] == ("text", "NO") and "'pending'" in columns["status"][2]
    assert columns["result"][0] == "text"
    assert columns["error"][0] == "text"
    for stamp in ("created_at", "updated_at"):
        assert columns[stamp][:2] == ("timestamp with time zone", "NO")
        assert "now()" in columns[stamp][2]
    [(identity,)] = _query(empty_db_url, "SELECT is_identity FROM information_schema.columns"
                           " WHERE table_name = 'tasks' AND column_name = 'id'")
    assert identity == "YES" or "nextval" in (columns["id"][2] or "")  # identity or bigserial

    partial = _query(empty_db_url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'tasks'"
                     " AND indexdef LIKE '%WHERE%status%pending%'")
    assert partial, "no partial index on pending tasks"

    assert [name for _, name in _recorded(empty_db_url)] == MIGRATIONS

    with closing(psycopg2.connect(empty_db_url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO tasks (payload) VALUES ('x') RETURNING status, attempts")
            assert cur.fetchone() == ("pending", 0)
            for status in ("in_progress", "done", "error"):
                cur.execute("INSERT INTO tasks (payload, status) VALUES ('x', %s)", (status,))
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("INSERT INTO tasks (payload, status) VALUES ('x', 'bogus')")
            with pytest.raises(psycopg2.errors.NotNullViolation):
                cur.execute("INSERT INTO tasks (payload, status) VALUES ('x', NULL)")
            cur.execute("INSERT INTO tasks (id, payload) VALUES (5000000000, 'big') RETURNING id")
            assert cur.fetchone() == (5000000000,)


def test_migrate_twice_applies_nothing_the_second_time(empty_db_url: str) -> None:
    env = {"DATABASE_URL": empty_db_url}
    code, first, err = run_cli(["migrate"], env=env)
    assert code == 0, (first, err)
    assert first.count("Applied migration") == len(MIGRATIONS)
    before = _query(empty_db_url, "SELECT version, applied_at FROM schema_migrations")

    code, second, err = run_cli(["migrate"], env=env)
    assert code == 0, (second, err)
    assert "Migration completed successfully" in second
    assert "Applied migration" not in second
    assert _query(empty_db_url, "SELECT version, applied_at FROM schema_migrations") == before


def test_migrate_on_a_migrated_database(db_url: str) -> None:
    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": db_url})
    assert code == 0, (out, err)
    assert "Applied migration" not in out
    assert [name for _, name in _recorded(db_url)] == MIGRATIONS


def test_008_gives_the_dashboard_a_search_side_table_and_runs_again(db_url: str) -> None:
    """The dashboard's search lives beside tasks (no GIN index on tasks: see
    test_dashboard_search.py); every statement of 008 may run again, as after
    a migrate interrupted half way."""
    indexes = dict(_query(db_url, "SELECT indexname, indexdef FROM pg_indexes WHERE "
                                  "tablename IN ('tasks', 'taskworker_search')"))
    assert "gin (((task_id >> 18)), words gin_trgm_ops)" in \
        indexes["taskworker_search_range_words_idx"]  # (021's, in place of 008's)
    assert "(updated_at, id) WHERE" in indexes["tasks_finished_at_idx"]
    assert "tasks_finished_text_idx" not in indexes
    start = [("-infinity", 0, "-infinity")]
    progress = ("SELECT indexed_at::text, indexed_id, watermark::text "
                "FROM taskworker_search_progress")
    assert _query(db_url, progress) == start
    with closing(psycopg2.connect(db_url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("DELETE FROM schema_migrations WHERE version = 8")
    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": db_url})
    assert code == 0, (out, err)
    assert re.findall(r"Applied migration (\S+)", out) == ["008_dashboard_indexes.sql"]
    assert _query(db_url, progress) == start


def test_two_migrates_at_the_same_moment(empty_db_url: str, tmp_path: Path) -> None:
    env = child_env({"DATABASE_URL": empty_db_url})
    procs = [subprocess.Popen([*CLI, "migrate"], env=env, cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            outputs.append(out)
            assert p.returncode == 0, (out, err)
            assert "Migration completed successfully" in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    applied = re.findall(r"Applied migration (\S+)", "".join(outputs))
    assert sorted(applied) == MIGRATIONS  # each applied by exactly one of them
    assert [name for _, name in _recorded(empty_db_url)] == MIGRATIONS
    assert _query(empty_db_url, "SELECT count(*) FROM tasks") == [(0,)]


def test_migrate_unreachable_database_is_one_line() -> None:
    code, out, err = run_cli(["migrate"], env={"DATABASE_URL": UNREACHABLE_URL},
                             timeout=30)
    assert code == 1, (out, err)
    assert len(err.splitlines()) == 1 and "127.0.0.1" in err
    assert "Traceback" not in out + err


def test_cancelled_status_needs_migration_004(db: Any) -> None:
    """The migration widened the status check: 'cancelled' is accepted, nonsense is not."""
    add_task(db, status="cancelled")
    with pytest.raises(psycopg2.errors.CheckViolation, match="tasks_status_check"):
        add_task(db, status="canceled")
