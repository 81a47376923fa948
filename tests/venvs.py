"""Copies of the checkout and scratch virtualenvs, for the tests that build and
install taskworker the way a user does (test_packaging.py, test_systemd.py).

Each command runs without the caller's PIP_* and PYTHON* variables (tox sets some),
and a failure that only says the package index cannot be reached skips the test
instead of failing it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_NETWORK = re.compile(r"Failed to establish a new connection|Could not fetch URL|"
                        r"Temporary failure in name resolution|No matching distribution")
# (and .ci/run's venv, its tox: thousands of files, and pythons, links it follows)
LEFT_OUT = shutil.ignore_patterns(".git", ".tox", ".venv", "venv", "pythons", "*.egg-info",
                                  "__pycache__", "build", "dist", ".ruff_cache",
                                  ".pytest_cache", "artifacts")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without PIP_* and PYTHON*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {**env, **extra}


def run(args: Sequence[str | Path], cwd: Path | None = None,
        env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command that may fetch from the package index; return its output."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0 and NO_NETWORK.search(output):
        pytest.skip(f"the package index cannot be reached: {output.strip()[-300:]}")
    assert done.returncode == 0, f"{' '.join(map(str, args))}: exit {done.returncode}\n{output}"
    return output


def checkout_copy(dest: Path) -> Path:
    """The checkout as a fresh clone holds it (no build output, caches or .git)."""
    shutil.copytree(REPO, dest, ignore=LEFT_OUT)
    return dest


def new_venv(path: Path) -> Path:
    """A virtualenv with today's pip (scripts/demo.sh upgrades it first too)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    pip(path, "install", "-q", "--upgrade", "pip")
    return path


def pip(venv: Path, *args: str) -> str:
    return run([venv / "bin" / "python", "-m", "pip", *args])
