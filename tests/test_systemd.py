"""contrib/taskworker.service and the steps of docs/how-to/systemd.md that install it.

Nothing here starts systemd. The guide's steps run as they stand, with /opt, /etc
and /var moved under a scratch root, on a host where no taskworker user or folder
exists: all but the `systemctl`/`journalctl` ones, which need a running systemd.
`systemd-analyze` (Debian's systemd package; .ci/run installs it) verifies the unit
and rates its exposure, offline; without it (250 or later) those tests skip. The exit statuses
the unit treats as clean or as not worth a restart are the ones `taskworker serve`
gives. And `serve` works confined as the unit confines it, as far as that can be
done here (tests/confine.py): its system calls, address families,
MemoryDenyWriteExecute, UMask, no capabilities and no new privileges.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from invariants import status_counts, wait_until
from pgserver import free_port
from proc import CLI, ServeFactory, child_env, cli
from scrapes import get, scrape, value
from venvs import REPO, checkout_copy, clean_env, run

UNIT = REPO / "contrib" / "taskworker.service"
CONFINE = Path(__file__).resolve().parent / "confine.py"
MAX_EXPOSURE = 2.5  # systemd-analyze security: up to 2.9 is "OK"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # sysinit.target & co., for `verify`
MOVED = re.compile(r"(?<![\w./-])/(opt|etc|var)/")  # absolute paths the steps write to


def directives() -> dict[str, list[str]]:
    """The unit's settings: name -> values in order (a name may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, setting = line.split("=", 1)
            found.setdefault(key.strip(), []).append(setting.strip())
    return found


def one(name: str) -> str:
    values = directives().get(name, [])
    assert len(values) == 1, f"the unit sets {name}= {len(values)} times"
    return values[0]


def statuses(name: str) -> set[int]:
    return {int(s) for setting in directives().get(name, []) for s in setting.split()}


def systemd_analyze() -> str:
    """Its path; skip when there is none, or one without --offline and verify --root."""
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    number = re.match(r"systemd (\d+)", version)
    if not number or int(number.group(1)) < 250:
        pytest.skip(f"systemd-analyze is older than 250: {version.strip()[:60]!r}")
    return found


def guide_steps() -> list[str]:
    """The commands of the first ```sh block of docs/how-to/systemd.md (the
    documentation's systemd guide), comments dropped and `a && b` split in two."""
    text = (REPO / "docs" / "how-to" / "systemd.md").read_text()
    block = re.search(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    assert block, "no ```sh block in docs/how-to/systemd.md"
    commands = []
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


@pytest.mark.slow
def test_the_guide_steps_install_on_a_fresh_host(tmp_path: Path, empty_db_url: str) -> None:
    root, work = tmp_path / "root", tmp_path / "work"
    (root / "etc/systemd/system").mkdir(parents=True)  # a host with systemd has it; no more
    work.mkdir()
    (work / ".env").write_text(f"DATABASE_URL={empty_db_url}\nWORKER_COUNT=3\n")
    homepage = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Homepage"]
    path = os.pathsep.join([str(Path(sys.executable).parent), clean_env()["PATH"]])
    outputs, left = [], []
    for command in guide_steps():
        words = command.split()
        if words[0] in ("systemctl", "journalctl") or "./myapp" in words:
            left.append(command)  # needs a running systemd / is the reader's own project
        elif words[:2] == ["git", "clone"]:
            assert words[2] in (homepage, f"{homepage}.git"), command
            target = words[3] if len(words) > 3 else words[2].rsplit("/", 1)[1].removesuffix(".git")
            checkout_copy(work / target)  # the repository as a clone holds it; no network
        else:
            outputs.append(run(["bash", "-euc", MOVED.sub(f"{root}/\\1/", command)], cwd=work,
                               env=clean_env(PATH=path), timeout=600))
    # Only these were left out: a new step would run here or be listed.
    assert [c.split()[0] for c in left] == ["/opt/taskworker/bin/pip", "systemctl",
                                            "systemctl", "journalctl"], left

    migrated = "".join(outputs)
    assert re.findall(r"Applied migration (\S+)", migrated) == sorted(
        p.name for p in (REPO / "migrations").glob("*.sql")), migrated

    # What the unit names is there now, or is made by systemd when it starts the service.
    assert (root / "etc/systemd/system/taskworker.service").read_bytes() == UNIT.read_bytes()
    program = root / one("ExecStart").split()[0].lstrip("/")
    assert program.is_file() and os.access(program, os.X_OK), program
    env_file = root / one("EnvironmentFile").lstrip("/")
    assert env_file.read_text() == (work / ".env").read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # the password: root's alone
    assert one("WorkingDirectory") == f"/var/lib/{one('StateDirectory')}"
    assert env_file.parent == root / "etc" / one("ConfigurationDirectory")
    # No user for the steps to create: systemd makes one for each run.
    assert one("DynamicUser") == "yes" and "User" not in directives()


def test_the_unit_verifies(tmp_path: Path) -> None:
    """As installed by the guide's steps: `verify` also checks that ExecStart's
    program exists, which the previous test does with the real one."""
    analyze = systemd_analyze()
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} is missing: systemd's own units are needed to verify")
    shutil.copytree(SYSTEM_UNITS, tmp_path / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system")
    program = tmp_path / one("ExecStart").split()[0].lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    done = subprocess.run([analyze, "verify", f"--root={tmp_path}", UNIT.name],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_is_rated_ok() -> None:
    analyze = systemd_analyze()
    threshold = f"--threshold={MAX_EXPOSURE * 10:g}"  # in tenths: the exit status says too
    done = subprocess.run([analyze, "security", "--offline=true", threshold, "--no-pager",
                           str(UNIT)], capture_output=True, text=True, timeout=60, check=False)
    rated = re.search(r"Overall exposure level for taskworker\.service: (\d+\.\d) (\w+)",
                      done.stdout)
    assert rated, done.stdout + done.stderr
    assert float(rated.group(1)) <= MAX_EXPOSURE and rated.group(2) == "OK", rated.group(0)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_units_exit_statuses_are_the_ones_serve_gives(tmp_path: Path) -> None:
    clean, final = statuses("SuccessExitStatus"), statuses("RestartPreventExitStatus")

    # Stopped (SIGINT, the unit's KillSignal) while still connecting: a clean stop.
    assert one("KillSignal") == "SIGINT"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/taskprocessor"
        proc = subprocess.Popen([*CLI, "serve"], cwd=tmp_path, text=True,
                                env=child_env({"DATABASE_URL": url}),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        assert "Connecting to database" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    finally:
        silent.close()
    assert proc.returncode in clean, (proc.returncode, output)

    # Bad configuration: no restart. An unreachable database: restarted (Restart=on-failure).
    bad = subprocess.run([*CLI, "serve"], cwd=tmp_path, env=child_env({"WORKER_COUNT": "many"}),
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.stderr == "Error: invalid WORKER_COUNT='many': expected a whole number\n"
    assert bad.returncode in final
    down = subprocess.run([*CLI, "serve"], cwd=tmp_path, capture_output=True, text=True,
                          env=child_env({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}),
                          timeout=60, check=False)
    assert "Connection refused" in down.stderr
    assert down.returncode not in clean | final | {0}
    assert one("Restart") == "on-failure"


def allowed_syscalls(analyze: str) -> list[str]:
    """The unit's SystemCallFilter= lines, groups expanded the way this systemd
    defines them: the first line allows, a line starting with ~ takes away."""
    listing = subprocess.run([analyze, "syscall-filter", "--no-pager"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    for line in listing.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            members.append(line.strip())

    def expand(names: list[str]) -> set[str]:
        return set().union(*(expand(groups[n]) if n.startswith("@") else {n} for n in names))

    allowed: set[str] = set()
    for line in directives()["SystemCallFilter"]:
        names = expand(line.removeprefix("~").split())
        allowed = allowed - names if line.startswith("~") else allowed | names
    return sorted(allowed)


def test_serve_works_confined_as_the_unit_confines_it(serve: ServeFactory, db_url: str,
                                                      db: object) -> None:
    analyze = systemd_analyze()
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("dropping every capability needs root and setpriv (util-linux)")
    settings = {"syscalls": allowed_syscalls(analyze),
                "families": one("RestrictAddressFamilies").split(),
                "umask": int(one("UMask"), 8)}
    assert one("MemoryDenyWriteExecute") == "yes" and one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    prefix = ["setpriv", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all",
              sys.executable, str(CONFINE), json.dumps(settings)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=60,
                           check=False)
    if "PR_SET_MDWE" in probe.stderr or "seccomp" in probe.stderr.lower():
        pytest.skip(f"cannot confine here: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr

    assert cli(db_url, "seed")[0] == 0
    metrics, dashboard = free_port(), free_port()
    p = serve(db_url, prefix=prefix, env={
        "TASK_MIN_SECONDS": "0", "TASK_MAX_SECONDS": "0.05", "TASK_FAILURE_RATE": "0",
        "METRICS_PORT": str(metrics), "DASHBOARD_PORT": str(dashboard)})
    wait_until(lambda: status_counts(db) == {"done": 20}, 60,
               lambda: f"20 tasks done, not {status_counts(db)}", [p], fail_on_exit=True)
    assert value(scrape(metrics), "taskworker_tasks_finished_total", status="done") == 20
    assert get(dashboard, "/tasks?q=task")[0] == 200
    p.signal(signal.SIGINT)
    assert p.wait() == 0, p.output()
    assert "Traceback" not in p.output() and "Error" not in p.output(), p.output()
