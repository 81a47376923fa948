"""The README's five-minute tour, run for real: its sample output is kept true.

The tour's commands run as a user runs them, against a fresh empty database:
migrate, seed, serve (the demo handler, quick and failing often enough to show
errors), status while serve runs, enqueue and show, the Python snippet of step 6,
step 7's task module written by the tour's own shell block and its call waited
for, and Ctrl+C. Each sample block of the tour is compared with the real output
by shape: timestamps, numbers, durations, URLs, the host name and the holder's
random part normalized, columns' spacing ignored. A block's lines between two
`...` must appear in the real output one after the other (the migrations, the
status tables), except in the log of serve, whose workers interleave: there each
line must have a real line of its shape, in the same order.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg2
from invariants import query, wait_until
from proc import ServeFactory, child_env, run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
# Quick demo tasks that fail often (status shows errors; none fail from step 6 on),
# the rest the defaults.
DEMO = {"TASK_MIN_SECONDS": "0.05", "TASK_MAX_SECONDS": "0.2", "TASK_FAILURE_RATE": "0.5"}
# Lines a sample shows that a run prints only in some conditions (the pattern, why).
CONDITIONAL = {
    "Gave back # queued tasks to pending":
        "only when Ctrl+C finds tasks claimed and not started",
}


def tour() -> list[str]:
    """The tour's code blocks, in order."""
    text = README.read_text("utf-8")
    section = text[text.index("## A five-minute tour"):text.index("## How it works")]
    return re.findall(r"^```[a-z]*\n(.*?)^```", section, flags=re.S | re.M)


def block(containing: str) -> str:
    [found] = [b for b in tour() if containing in b]
    return found


def shape(line: str) -> str:
    """A line with what changes from run to run normalized."""
    line = line.removeprefix("^C").replace(socket.gethostname(), "laptop")
    line = re.sub(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", "TIME", line)
    line = re.sub(r"postgres(ql)?://\S+", "URL", line)
    line = re.sub(r"\b[0-9a-f]{8}\b", "HEX", line)  # a holder's random part
    line = re.sub(r'File "[^"]*?/(taskworker/[^"/]+\.py)"', r'File ".../\1"', line)
    line = re.sub(r"\b\d+(\.\d+)?(ms|[dhms])( \d+(\.\d+)?(ms|[dhms]))*\b", "DURATION", line)
    line = re.sub(r"\d+(\.\d+)?", "#", line)
    return " ".join(line.split())


def runs(sample: str) -> list[list[str]]:
    """The sample's lines as runs of consecutive lines, split at `...`."""
    found: list[list[str]] = [[]]
    for line in sample.splitlines():
        if line.strip() == "...":
            found.append([])
        elif line.strip():
            found[-1].append(shape(line))
    return [r for r in found if r]


def assert_contiguous(sample: str, real: str, what: str) -> None:
    """Every run of the sample's lines is a run of the real output's lines, in order."""
    lines = [shape(line) for line in real.splitlines() if line.strip()]
    at = 0
    for run in runs(sample):
        starts = [i for i in range(at, len(lines) - len(run) + 1)
                  if lines[i:i + len(run)] == run]
        assert starts, (f"{what}: the README shows\n  " + "\n  ".join(run)
                        + "\nbut the real output has no such lines (after line "
                        f"{at}):\n  " + "\n  ".join(lines))
        at = starts[0] + len(run)


def assert_in_order(sample: str, real: str, what: str) -> None:
    """Every line of the sample has a real line of its shape, in the same order
    (but the CONDITIONAL ones, which a run may not print)."""
    lines = [shape(line) for line in real.splitlines() if line.strip()]
    at = 0
    for line in (line for run in runs(sample) for line in run):
        if any(shown in line for shown in CONDITIONAL):
            continue
        found = next((i for i in range(at, len(lines)) if lines[i] == line), None)
        assert found is not None, (f"{what}: the README shows {line!r}, the real output "
                                   "has no such line here:\n  " + "\n  ".join(lines[at:]))
        at = found + 1


def test_the_tour_prints_what_the_readme_shows(empty_db_url: str, serve: ServeFactory,
                                              tmp_path: Path) -> None:
    env = {"DATABASE_URL": empty_db_url}
    code, out, err = run_cli(["migrate"], env=env)
    assert code == 0, err
    assert_contiguous(block("Running database migration..."), out + err, "step 2, migrate")
    code, out, err = run_cli(["seed"], env=env)
    assert code == 0, err

    first = serve(empty_db_url, env=DEMO)  # step 3: `taskworker serve`, the demo handler
    db = psycopg2.connect(empty_db_url)
    db.autocommit = True
    try:
        wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status IN "
                                     "('done', 'error')")[0][0] == 20, 30,
                   "the 20 seeded tasks to run", [first])
        sample = block("Starting task processor")
        assert_in_order(sample, first.output(), "step 4, serve")
        # The first claim's size, numbers kept: the workers idle (FETCH_LIMIT unset).
        fetched = [re.search(r"Fetched (\d+) tasks", text) for text in (sample, first.output())]
        assert fetched[0] and fetched[1] and fetched[0][0] == fetched[1][0], fetched

        code, out, err = run_cli(["status"], env=env)  # step 5, serve still running
        assert code == 0, err
        sample = block("$ taskworker status").split("\n", 1)[1]
        assert_contiguous(sample, out, "step 5, status")

        # Step 6 wants its task done: the same serve without failures from here on.
        first.signal(signal.SIGINT)
        assert first.wait() == 0, first.output()
        first = serve(empty_db_url, env={**DEMO, "TASK_FAILURE_RATE": "0"})
        first.wait_for(r"Starting task processor")
        sample = block("$ taskworker enqueue")  # step 6
        code, out, err = run_cli(["enqueue", "hello from the shell"], env=env)
        assert code == 0 and out.strip() == "21", (out, err)
        wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = 21")[0][0] == "done",
                   15, "task 21 to run", [first])
        code, shown, err = run_cli(["show", "21"], env=env)
        assert code == 0, err
        commands = re.split(r"^\$ .*$", sample, flags=re.M)
        assert shape(commands[1]) == "#", sample
        assert_contiguous(commands[2], shown, "step 6, show")

        cwd = tmp_path / "cwd"  # the serve fixture's folder: the clone's, in the tour
        python = block("hello from Python")
        ran = subprocess.run(["bash", "-c", python], cwd=cwd, capture_output=True, text=True,
                             env=child_env({**env, "PATH": _with_python()}), timeout=60)
        assert ran.returncode == 0 and re.fullmatch(r"\d+\n", ran.stdout), ran

        # Step 7: the tour's shell block writes myapp/tasks.py; serve again with it.
        written = subprocess.run(["bash", "-c", block("cat > myapp/tasks.py")], cwd=cwd,
                                 capture_output=True, text=True, timeout=30)
        assert written.returncode == 0, written
        first.signal(signal.SIGINT)
        assert first.wait() == 0, first.output()
        second = serve(empty_db_url, env=DEMO, args=["--tasks", "myapp.tasks"])
        second.wait_for(r"Starting task processor")
        ran = subprocess.run(["bash", "-c", block("send_receipt.enqueue")], cwd=cwd,
                             capture_output=True, text=True, timeout=60,
                             env=child_env({**env, "PATH": _with_python()}))
        assert ran.returncode == 0, ran
        assert_contiguous(block("{'order'"), ran.stdout, "step 7, the call's result")

        second.signal(signal.SIGINT)  # step 8
        assert second.wait() == 0, second.output()
        assert_in_order(block("Shutdown signal received"), second.output(), "step 8, Ctrl+C")
    finally:
        db.close()


def _with_python() -> str:
    """PATH with this interpreter's folder first: the tour's `python` is the venv's."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
