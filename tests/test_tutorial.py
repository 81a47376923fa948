"""The tutorial (docs/tutorial.md), run for real: its sample output is kept true.

The tutorial's commands run as a user runs them, against a fresh empty database:
migrate, seed, serve (the demo handler, quick and failing often enough to show
errors), status while serve runs, enqueue and show, the Python snippet of step 6;
then the application: myapp/tasks.py and the scripts as the page writes them
(its `<!-- file: -->` blocks), serve with --tasks, the scripts run, the
dashboard, `taskworker schedule` after the periodic task's first tick, and
Ctrl+C. Each sample block is compared with the real output by shape:
timestamps, numbers, durations, URLs, the host name and the holder's random
part normalized, columns' spacing ignored. A block's lines between two `...`
must appear in the real output one after the other (the migrations, the status
tables), except in the logs of serve, whose workers interleave: there each line
must have a real line of its shape, in the same order.

The marked blocks of steps 7 to 10 are also run, their output compared exactly,
by tests/test_docs_samples.py.
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
from dashboard_client import running_dashboard
from docs_samples import steps
from invariants import query, wait_until
from proc import ServeFactory, child_env, run_cli

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
# Quick demo tasks that fail often (status shows errors; none fail from step 6 on),
# the rest the defaults.
DEMO = {"TASK_MIN_SECONDS": "0.05", "TASK_MAX_SECONDS": "0.2", "TASK_FAILURE_RATE": "0.5"}
# Lines a sample shows that a run prints only in some conditions (the pattern, why).
CONDITIONAL = {
    "Gave back # queued tasks to pending":
        "only when Ctrl+C finds tasks claimed and not started",
}


def blocks() -> list[str]:
    """The page's code blocks, in order."""
    return re.findall(r"^```[a-z]*\n(.*?)^```", PAGE.read_text("utf-8"), flags=re.S | re.M)


def block(containing: str) -> str:
    found = [b for b in blocks() if containing in b]
    assert len(found) == 1, f"{len(found)} blocks of the tutorial hold {containing!r}"
    return found[0]


def after(containing: str) -> str:
    """The block that follows the one holding `containing` (what it printed)."""
    found = blocks()
    return found[found.index(block(containing)) + 1]


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


def contiguous(sample: str, real: str) -> str | None:
    """None if every run of the sample's lines is a run of the real output's lines,
    in order; else what is missing."""
    lines = [shape(line) for line in real.splitlines() if line.strip()]
    at = 0
    for run in runs(sample):
        starts = [i for i in range(at, len(lines) - len(run) + 1)
                  if lines[i:i + len(run)] == run]
        if not starts:
            return ("the tutorial shows\n  " + "\n  ".join(run) + "\nbut the real output "
                    f"has no such lines (after line {at}):\n  " + "\n  ".join(lines))
        at = starts[0] + len(run)
    return None


def assert_contiguous(sample: str, real: str, what: str) -> None:
    missing = contiguous(sample, real)
    assert missing is None, f"{what}: {missing}"


def assert_in_order(sample: str, real: str, what: str) -> None:
    """Every line of the sample has a real line of its shape, in the same order
    (but the CONDITIONAL ones, which a run may not print)."""
    lines = [shape(line) for line in real.splitlines() if line.strip()]
    at = 0
    for line in (line for run in runs(sample) for line in run):
        if any(shown in line for shown in CONDITIONAL):
            continue
        found = next((i for i in range(at, len(lines)) if lines[i] == line), None)
        assert found is not None, (f"{what}: the tutorial shows {line!r}, the real output "
                                   "has no such line here:\n  " + "\n  ".join(lines[at:]))
        at = found + 1


def test_the_tutorial_prints_what_it_shows(empty_db_url: str, serve: ServeFactory,
                                           tmp_path: Path) -> None:
    env = {"DATABASE_URL": empty_db_url}
    shell_env = child_env({**env, "PATH": _with_python()})
    cwd = tmp_path / "cwd"  # the serve fixture's folder: the user's project folder
    code, out, err = run_cli(["migrate"], env=env)  # step 2
    assert code == 0, err
    assert_contiguous(block("Running database migration..."), out + err, "step 2, migrate")
    code, out, err = run_cli(["seed"], env=env)
    assert code == 0, err

    demo = serve(empty_db_url, env=DEMO)  # step 3: `taskworker serve`, the demo handler
    db = psycopg2.connect(empty_db_url)
    db.autocommit = True
    try:
        wait_until(lambda: query(db, "SELECT count(*) FROM tasks WHERE status IN "
                                     "('done', 'error')")[0][0] == 20, 30,
                   "the 20 seeded tasks to run", [demo])
        sample = block("Tasks without a name run with the demo handler")
        assert_in_order(sample, demo.output(), "step 4, serve")
        # The first claim's size, numbers kept: the workers idle (FETCH_LIMIT unset).
        fetched = [re.search(r"Fetched (\d+) tasks", text) for text in (sample, demo.output())]
        assert fetched[0] and fetched[1] and fetched[0][0] == fetched[1][0], fetched

        code, out, err = run_cli(["status"], env=env)  # step 5, serve still running
        assert code == 0, err
        sample = block("$ taskworker status").split("\n", 1)[1]
        assert_contiguous(sample, out, "step 5, status")

        # Step 6 wants its task done: the same serve without failures from here on.
        demo.signal(signal.SIGINT)
        assert demo.wait() == 0, demo.output()
        demo = serve(empty_db_url, env={**DEMO, "TASK_FAILURE_RATE": "0"})
        demo.wait_for(r"Starting task processor")
        sample = block("$ taskworker enqueue")  # step 6
        code, out, err = run_cli(["enqueue", "hello from the shell"], env=env)
        assert code == 0 and out.strip() == "21", (out, err)
        wait_until(lambda: query(db, "SELECT status FROM tasks WHERE id = 21")[0][0] == "done",
                   15, "task 21 to run", [demo])
        code, shown, err = run_cli(["show", "21"], env=env)
        assert code == 0, err
        commands = re.split(r"^\$ .*$", sample, flags=re.M)
        assert shape(commands[1]) == "#", sample
        assert_contiguous(commands[2], shown, "step 6, show")
        ran = subprocess.run(["bash", "-c", block("hello from Python")], cwd=cwd,
                             capture_output=True, text=True, env=shell_env, timeout=60)
        assert ran.returncode == 0 and re.fullmatch(r"\d+\n", ran.stdout), ran
        demo.signal(signal.SIGINT)  # the end of the demo
        assert demo.wait() == 0, demo.output()

        # Steps 7 to 10: the files as the page writes them, serve with the tasks.
        for step in steps(PAGE):
            if step.kind == "file":
                (cwd / step.path).parent.mkdir(parents=True, exist_ok=True)
                (cwd / step.path).write_text(step.code)
        assert block("taskworker serve --tasks") == "taskworker serve --tasks myapp.tasks\n"
        app = serve(empty_db_url, args=["--tasks", "myapp.tasks"])
        app.wait_for(r"Starting task processor")
        for script in ("python order.py", "python photos.py"):
            ran = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True,
                                 text=True, env=shell_env, timeout=60)
            assert ran.returncode == 0, ran
            assert ran.stdout.strip() == after(script).strip(), (script, ran.stdout)

        # Step 11: the dashboard counts the three queues; the schedule after a tick.
        with running_dashboard(empty_db_url, tmp_path) as dashboard:
            sample = block("$ taskworker dashboard").split("\n", 1)[1]
            assert_contiguous(sample, dashboard.output(), "step 11, dashboard")
            client = dashboard.client()

            def counted() -> bool:
                page = client.get("/")
                assert page.status == 200, page
                queues = page.text.split("By queue", 1)[1].split("By task name", 1)[0]
                return all(name in queues.split() for name in ("default", "emails", "images"))

            wait_until(counted, 30, "the overview to count the three queues", [app])
            page = client.get("/schedules")
            assert page.status == 200 and "myapp.tasks.report every 10s" in \
                " ".join(page.text.split()), page
        sample = block("$ taskworker schedule").split("\n", 1)[1]

        def listed() -> bool:
            code, out, err = run_cli(["schedule"], env=env)
            assert code == 0, err
            return contiguous(sample, out) is None

        try:
            wait_until(listed, 30, "the periodic task's first run in `taskworker schedule`",
                       [app])
        except AssertionError:
            assert_contiguous(sample, run_cli(["schedule"], env=env)[1], "step 11, schedule")
            raise
        assert_in_order(block("Serving tasks: myapp.tasks"), app.output(), "step 8, serve")

        app.signal(signal.SIGINT)  # step 12
        assert app.wait() == 0, app.output()
        assert_in_order(block("Shutdown signal received"), app.output(), "step 12, Ctrl+C")
    finally:
        db.close()


def _with_python() -> str:
    """PATH with this interpreter's folder first: the tutorial's `python` is the venv's."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
