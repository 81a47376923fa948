"""The 20 sample tasks: seed/seed_tasks.sql through psql, and `taskworker seed`
(with --count, and before the schema exists).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from invariants import query
from proc import run_cli

ROOT = Path(__file__).resolve().parent.parent


def payloads(db: Any) -> list[tuple[str, str]]:
    return query(db, "SELECT payload, status FROM tasks ORDER BY id")  # type: ignore[return-value]


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_seed_file_with_psql(db_url: str, db: Any) -> None:
    done = subprocess.run(["psql", db_url, "-v", "ON_ERROR_STOP=1", "-f",
                           str(ROOT / "seed" / "seed_tasks.sql")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert payloads(db) == [(f"Test task {n}", "pending") for n in range(1, 21)]


def test_seed_command(db_url: str, db: Any) -> None:
    code, out, err = run_cli(["seed", "--count", "7"], env={"DATABASE_URL": db_url})
    assert code == 0, (out, err)
    assert payloads(db) == [(f"Test task {n}", "pending") for n in range(1, 8)]


def test_seed_command_default_is_twenty(db_url: str, db: Any) -> None:
    code, out, err = run_cli(["seed"], env={"DATABASE_URL": db_url})
    assert code == 0, (out, err)
    assert payloads(db) == [(f"Test task {n}", "pending") for n in range(1, 21)]


def test_seed_before_migrate_says_so(empty_db_url: str) -> None:
    code, out, err = run_cli(["seed"], env={"DATABASE_URL": empty_db_url})
    assert code == 1, (out, err)
    assert len(err.splitlines()) == 1 and 'run "taskworker migrate" first' in err
    assert "Traceback" not in out + err
