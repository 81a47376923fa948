"""Installing taskworker from the repository, as the README says to: into a new
virtualenv, with the pip of today (scripts/demo.sh upgrades it first). A plain
install must carry the migrations (the README's systemd section); an editable
install (the demo's) must be quiet: it used to print a setuptools warning. A plain
install carries the dashboard's templates and static files too.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_NETWORK = re.compile(r"Failed to establish a new connection|Could not fetch URL|"
                        r"Temporary failure in name resolution|No matching distribution")
LEFT_OUT = shutil.ignore_patterns(".git", ".tox", ".venv", "*.egg-info", "__pycache__",
                                  "build", "dist", ".ruff_cache", ".pytest_cache")


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 and NO_NETWORK.search(done.stdout + done.stderr):
        pytest.skip(f"the package index cannot be reached: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_install_from_the_repository(tmp_path: Path, empty_db_url: str) -> None:
    clone = tmp_path / "taskworker"
    shutil.copytree(REPO, clone, ignore=LEFT_OUT)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, "install", "-q", "--upgrade", "pip")

    # `pip install ./taskworker`: a wheel built from the clone, migrations included.
    pip(venv, "install", "-q", str(clone))
    done = subprocess.run([str(venv / "bin" / "taskworker"), "migrate"], cwd=tmp_path,
                          env={"DATABASE_URL": empty_db_url, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    applied = re.findall(r"Applied migration (\S+)", done.stdout)
    assert applied == sorted(p.name for p in (REPO / "migrations").glob("*.sql")), done.stdout

    # The dashboard's templates and static files are in the wheel: every one of the
    # checkout's, and the overview renders from the installed copy.
    shipped = sorted(str(p.relative_to(REPO / "taskworker" / "dashboard"))
                     for folder in ("templates", "static")
                     for p in (REPO / "taskworker" / "dashboard" / folder).iterdir())
    check = ("import sys; from importlib import resources; "
             "root = resources.files('taskworker.dashboard'); "
             "missing = [n for n in sys.argv[1:] if not root.joinpath(n).is_file()]; "
             "from taskworker.dashboard.render import Templates; "
             "Templates().env.get_template('overview.html'); print(missing)")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", check, *shipped], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stdout + done.stderr

    # `pip install -e .` in the clone, as scripts/demo.sh runs it: not a word of warning.
    done = pip(venv, "install", "-q", "-e", str(clone))
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
