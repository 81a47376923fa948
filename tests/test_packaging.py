"""What a release holds, and installing it as the install guide says to.

`python -m build` makes the sdist and then the wheel from the unpacked sdist, so a
file the sdist forgets is missing from the wheel too. `twine check --strict` is
what PyPI would say of the README and the metadata. The wheel must hold every file
the package reads at run time (the migrations, queries.sql, the dashboard's files),
py.typed and LICENSE; the sdist ships no tests (they need the whole checkout and a
PostgreSQL server). Installed into a new virtualenv, the wheel migrates a fresh
database; an editable install (scripts/demo.sh's) is quiet: it used to print a
setuptools warning.
"""
from __future__ import annotations

import configparser
import email
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from venvs import REPO, checkout_copy, clean_env, new_venv, pip, run

MIGRATIONS = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy of the checkout they were built from
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    pytest.importorskip("build", reason="`build` is not installed (tox installs it)")
    root = tmp_path_factory.mktemp("dists")
    source = checkout_copy(root / "taskworker")
    out = root / "dist"
    run([sys.executable, "-m", "build", "--outdir", out, source], timeout=600)
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return Dists(source, sdist, wheel)


def package_files(source: Path) -> set[str]:
    """Every file of the package in `source`, as the wheel names it: taskworker/...,
    with the top-level migrations/ installed as taskworker/migrations/."""
    files = {p.relative_to(source).as_posix()
             for p in (source / "taskworker").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    return files | {f"taskworker/migrations/{name}" for name in MIGRATIONS}


def tar_text(sdist: Path, name: str) -> str:
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == name)
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read().decode()


def test_twine_check_strict(dists: Dists) -> None:
    pytest.importorskip("twine", reason="`twine` is not installed (tox installs it)")
    output = run([sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel])
    assert output.count("PASSED") == 2, output


def test_the_wheel_holds_what_the_package_reads(dists: Dists) -> None:
    names = zipfile.ZipFile(dists.wheel).namelist()
    shipped = {n for n in names if n.startswith("taskworker/")}
    expected = package_files(dists.source)
    assert {"taskworker/py.typed", "taskworker/store/queries.sql"} <= expected
    assert not expected - shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"in the wheel, not in the package: {sorted(shipped - expected)}"

    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    licence = zipfile.ZipFile(dists.wheel).read(f"{info}/licenses/LICENSE")
    assert licence == (REPO / "LICENSE").read_bytes()
    meta = email.message_from_bytes(zipfile.ZipFile(dists.wheel).read(f"{info}/METADATA"))
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"]
    assert re.fullmatch(r"Homepage, https://\S+", meta["Project-URL"]), meta["Project-URL"]


def test_the_description_works_away_from_the_repository(dists: Dists) -> None:
    """PyPI shows the README away from the repository: in the built metadata every
    link and image is absolute, and those into the repository start with the
    project's URL (pyproject.toml, its one place) and name a file or folder of the
    checkout (images: its raw files)."""
    info = next(n for n in zipfile.ZipFile(dists.wheel).namelist() if n.endswith("/METADATA"))
    meta = email.message_from_bytes(zipfile.ZipFile(dists.wheel).read(info))
    assert meta["Description-Content-Type"].startswith("text/markdown")
    text = meta.get_payload()
    assert "taskworker serve --tasks myapp.tasks" in text  # the README, not another text
    homepage = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Homepage"]
    outside_code = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    targets = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", outside_code)
    assert targets
    relative = [t for _, t in targets if not t.startswith(("https://", "http://"))]
    assert not relative, f"relative links: {relative}"
    for image, url in targets:
        rest = url.removeprefix(homepage)
        if rest == url:
            continue  # elsewhere (none today)
        m = re.fullmatch(r"/(blob|raw)/main/([^#]+)(#.*)?", rest)
        assert m, f"{url}: not a file or folder of the main branch"
        assert m.group(1) == ("raw" if image else "blob"), url
        assert (REPO / m.group(2)).exists(), f"{url}: no {m.group(2)} in the checkout"


def test_classifiers_name_the_pythons_tox_tests(dists: Dists) -> None:
    tox = configparser.ConfigParser()
    tox.read(REPO / "tox.ini")
    envs = re.findall(r"\bpy3(\d+)\b", tox["tox"]["envlist"])
    assert len(envs) >= 3, tox["tox"]["envlist"]
    info = next(n for n in zipfile.ZipFile(dists.wheel).namelist() if n.endswith("/METADATA"))
    meta = email.message_from_bytes(zipfile.ZipFile(dists.wheel).read(info))
    versions = sorted(c.rsplit(" ", 1)[1] for c in meta.get_all("Classifier")
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions == sorted(f"3.{minor}" for minor in envs)
    assert meta["Requires-Python"] == f">=3.{min(envs, key=int)}"


def test_the_sdist_holds_the_sources_and_no_tests(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = package_files(dists.source) - {f"taskworker/migrations/{m}" for m in MIGRATIONS}
    wanted |= {f"migrations/{m}" for m in MIGRATIONS}
    wanted |= {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    # A test file without the helpers it imports (conftest.py, tests/proc.py, ...)
    # cannot run: ship them all or none, and none is simpler.
    tests = sorted(n for n in names if n.startswith("tests/"))
    assert not tests, f"the sdist ships tests: {tests}"
    pyproject = tomllib.loads(tar_text(dists.sdist, "pyproject.toml"))
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"


@pytest.mark.slow
def test_the_installed_wheel_migrates_and_serves_its_files(dists: Dists, tmp_path: Path,
                                                           empty_db_url: str) -> None:
    venv = new_venv(tmp_path / "venv")
    pip(venv, "install", "-q", str(dists.wheel))

    # A folder named migrations/ beside the package, as a carelessly packaged
    # distribution leaves in site-packages: not taskworker's schema.
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    (site / "migrations").mkdir()
    (site / "migrations" / "001_someone_elses.sql").write_text("SELECT 1/0;\n")

    env = {"DATABASE_URL": empty_db_url, "PATH": clean_env()["PATH"]}
    done = subprocess.run([str(venv / "bin" / "taskworker"), "migrate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"Applied migration (\S+)", done.stdout) == MIGRATIONS, done.stdout

    # The dashboard's templates and static files: every one of the checkout's is
    # there, and the overview renders from the installed copy.
    dashboard = REPO / "taskworker" / "dashboard"
    shipped = sorted(str(p.relative_to(dashboard))
                     for folder in ("templates", "static") for p in (dashboard / folder).iterdir())
    check = ("import sys; from importlib import resources; "
             "root = resources.files('taskworker.dashboard'); "
             "missing = [n for n in sys.argv[1:] if not root.joinpath(n).is_file()]; "
             "from taskworker.dashboard.render import Templates; "
             "Templates().env.get_template('overview.html'); print(missing)")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", check, *shipped], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stdout + done.stderr

    # `pip install -e .` in a clone, as scripts/demo.sh runs it: not a word of warning.
    output = pip(venv, "install", "-q", "-e", str(checkout_copy(tmp_path / "clone")))
    assert "warning" not in output.lower(), output
