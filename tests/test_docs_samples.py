"""Every sample the documentation marks as runnable runs, as it stands, against a
real PostgreSQL (tests/docs_samples.py says how a page marks them).

Each page runs in a fresh empty folder with a fresh migrated database: files are
written, `taskworker serve` started, blocks run in order; a block marked as output
must be what the run before it printed. A sample that fails shows the page and line.
Marked `docs`: tox runs them in its docs environment, after the site's strict build.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from docs_samples import REPO, Step, pages, steps
from invariants import stray_traceback
from proc import ServeProcess, child_env

pytestmark = pytest.mark.docs  # tox runs these in its docs environment

RUN_TIMEOUT = 90  # one block; a sample waits for tasks at most about 30 s


def test_samples_are_found() -> None:
    """The marks are read: a page the site is known to test has its samples."""
    found = [p.relative_to(REPO).as_posix() for p in pages()]
    assert {"README.md", "docs/tutorial.md"} <= set(found), found


def _shell(lang: str) -> list[str]:
    if lang == "python":
        return [sys.executable, "-"]
    if lang in ("sh", "bash", "shell"):
        return ["bash", "-euo", "pipefail", "-s"]
    raise AssertionError(f"cannot run a {lang or 'plain'} block: mark python or sh blocks")


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_samples_run(page: Path, db_url: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bindir = Path(sys.executable).parent
    env = child_env({
        "DATABASE_URL": db_url,
        "PYTHONPATH": os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH"))
                                      if p),
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FETCH_INTERVAL": "0.2",
    })
    served: list[ServeProcess] = []
    last: tuple[Step, str] | None = None
    where = page.relative_to(REPO).as_posix()
    try:
        for step in steps(page):
            at = f"{where}:{step.line}"
            if step.kind == "file":
                target = work / step.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.code)
            elif step.kind == "serve":
                log = tmp_path / f"serve-{len(served) + 1}.log"
                served.append(ServeProcess(step.args, env, str(work), str(log)))
                served[-1].wait_for(r"Starting task processor", 60)
            elif step.kind == "run":
                done = subprocess.run(_shell(step.lang), input=step.code, cwd=work, env=env,
                                      capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                      check=False)
                logs = "".join(f"\n--- serve:\n{p.output()[-3000:]}" for p in served)
                assert done.returncode == 0, (
                    f"{at}: exit {done.returncode}\n{done.stdout}\n{done.stderr}{logs}")
                last = (step, done.stdout)
            elif step.kind == "output":
                assert last is not None, f"{at}: an output block with no run before it"
                shown = [line.rstrip() for line in step.code.strip("\n").splitlines()]
                real = [line.rstrip() for line in last[1].strip("\n").splitlines()]
                assert real == shown, f"{at}: the sample shows\n{step.code}\nthe run printed\n" \
                                      f"{last[1]}"
    finally:
        for p in served:
            if p.proc.poll() is None:
                p.signal(signal.SIGINT)
    for p in served:
        code = p.wait(60)
        assert code == 0 and not stray_traceback(p.output()), f"{where}: serve\n{p.output()}"
