"""What every command does the same way: the version, and the one-line error of
each command when the schema is missing or the database does not answer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import UNREACHABLE_URL
from proc import child_env, cli, run_cli

from taskworker import __version__

VERSION_LINE = f"taskworker, version {__version__}"


def run(args: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(args, env=child_env(), text=True, capture_output=True, timeout=60,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def test_version_from_python_m() -> None:
    code, out, err = run([sys.executable, "-m", "taskworker", "--version"])
    assert (code, out, err) == (0, VERSION_LINE + "\n", "")


def test_version_from_the_console_script() -> None:
    script = Path(sys.executable).with_name("taskworker")  # where pip puts it
    if not script.exists():
        pytest.skip(f"taskworker is not installed as a console script next to {sys.executable}")
    code, out, err = run([str(script), "--version"])
    assert (code, out, err) == (0, VERSION_LINE + "\n", "")


# --- every command: no schema, no database


COMMANDS = [["status"], ["status", "--json"], ["show", "1"], ["retry", "1"],
            ["retry", "--all-errors"], ["cancel", "1"], ["prune", "--older-than", "1d"],
            ["enqueue", "x"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_before_migrate(empty_db_url: str, args: list[str]) -> None:
    code, out, err = cli(empty_db_url, *args)
    assert (code, out) == (1, "")
    assert err == 'Error: table "tasks" does not exist: run "taskworker migrate" first\n'


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_without_database(args: list[str]) -> None:
    code, out, err = run_cli(args, env={"DATABASE_URL": UNREACHABLE_URL, "CONNECT_TIMEOUT": "3"})
    assert (code, out) == (1, "")
    assert err.startswith(f"Error: cannot connect to database {UNREACHABLE_URL}")
    assert err.count("\n") == 1
