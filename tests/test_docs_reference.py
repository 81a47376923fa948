"""The documentation's reference pages are kept true to the code.

The settings table of docs/reference/settings.md is rendered at build time
(docs/hooks.py); here it is rendered the same way and read back as a user reads it:
its rows (variable(s), option, default, meaning) are compared with
`taskworker.settings.FIELDS` and the `Settings` dataclass defaults: every variable
is documented once, every documented variable exists, every default shown is the
real one, and every `--option` is an option of `taskworker serve` (or `dashboard`)
for that variable. The install guide must list the dependencies pyproject.toml
declares.

Pure: no database, no gevent in this process (`serve --help` runs as a subprocess).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from taskworker import settings as tw_settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"
INSTALL_PAGE = ROOT / "docs" / "how-to" / "install.md"
HEADER = ["Variable", "Option", "Default", "Meaning"]
NO_VALUE = object()  # marks a Settings field without a default


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the rendered table, for messages
    variables: list[str]
    options: list[str]
    defaults: list[str]  # one per variable


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table line (`\\|` inside a cell is not a separator)."""
    inner = line.strip()
    assert inner.startswith("|") and inner.endswith("|"), line
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner[1:-1])]


def rendered_table() -> str:
    """The settings table as the site shows it: docs/hooks.py's rendering, where the
    page has the hook's marker."""
    assert "<!-- settings-table -->" in SETTINGS_PAGE.read_text("utf-8"), (
        "docs/reference/settings.md no longer shows the generated table")
    # (in a child: the hook imports the commands, and with them gevent)
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'docs'); import hooks; "
                               "print(hooks.settings_table())"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True).stdout


def config_rows(text: str) -> list[Row]:
    """The rows of the Markdown table `text`."""
    lines = text.splitlines()
    table = [(i, line) for i, line in enumerate(lines, 1) if line.lstrip().startswith("|")]
    assert table, "no table"
    assert _cells(table[0][1]) == HEADER, f"unexpected header: {table[0][1]}"
    assert set(table[1][1].replace("|", "").strip()) <= set("-: "), "no separator line"
    rows = []
    for number, line in table[2:]:
        cells = _cells(line)
        assert len(cells) == len(HEADER), f"table line {number}: {len(cells)} cells: {line}"
        variables = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert variables, f"table line {number}: no variable in {cells[0]!r}"
        options = re.findall(r"`(--[a-z][a-z0-9-]*)`", cells[1])
        defaults = [d.strip().strip("`").strip() for d in cells[2].split(" / ")]
        if len(variables) > 1 and len(defaults) == 1:
            defaults *= len(variables)  # one default shared by the row's variables
        assert len(defaults) == len(variables), (
            f"table line {number}: {len(variables)} variables but defaults {cells[2]!r}")
        rows.append(Row(number, variables, options, defaults))
    return rows


# --- the table's way of writing a default, read back as a value

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def normalise(text: str) -> object:
    """`off` -> None, `true`/`false` -> bool, `5` -> 5, `0.1` -> 0.1, `5s`/`500ms`/`7d`
    -> seconds as float, anything else -> the text itself."""
    low = text.lower()
    if low in ("off", "none", "(none)"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)", text):
        return float(text)
    m = _DURATION.fullmatch(text)
    if m:
        return float(m.group(1)) * _SCALE[m.group(2)]
    return text


def same(shown: str, actual: object) -> bool:
    """Does the table's `shown` default mean the dataclass default `actual`?"""
    value = normalise(shown)
    if actual == ():  # an empty list (TASK_MODULES): shown as none
        actual = None
    if actual is None or isinstance(actual, bool):
        return value is actual
    if isinstance(actual, int):  # a count: written as a whole number, not `5s`
        return type(value) is int and value == actual
    if isinstance(actual, float):  # seconds or a fraction: `5s`, `5`, `0.1`
        return type(value) in (int, float) and float(value) == actual
    return value == actual


def test_normalise() -> None:
    assert same("5s", 5.0) and same("300s", 300.0) and same("5", 5.0)
    assert same("500ms", 0.5) and same("2m", 120.0) and same("7d", 604800.0)
    assert same("off", None) and same("true", True) and same("false", False)
    assert same("INFO", "INFO") and same("0.1", 0.1) and same("10", 10)
    assert not same("5s", 5)  # a count is not a duration
    assert not same("6", 5) and not same("4s", 5.0) and not same("on", True)
    assert not same("0", None) and not same("1", True) and not same("info", "INFO")


def defaults() -> dict[str, object]:
    """Environment variable -> the default of its Settings field."""
    fields = {f.name: f for f in dataclasses.fields(tw_settings.Settings)}
    found = {}
    for var, (name, _parse) in tw_settings.FIELDS.items():
        field = fields[name]
        found[var] = NO_VALUE if field.default is dataclasses.MISSING else field.default
    found["DATABASE_URL"] = tw_settings.DEFAULT_DATABASE_URL  # the field has none: load() sets it
    return found


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return config_rows(rendered_table())


def test_every_variable_is_documented_once(rows: list[Row]) -> None:
    documented = [var for row in rows for var in row.variables]
    duplicated = sorted({var for var in documented if documented.count(var) > 1})
    assert not duplicated, f"in more than one row of the configuration table: {duplicated}"
    missing = sorted(set(tw_settings.FIELDS) - set(documented))
    assert not missing, f"settings.FIELDS has variables the table does not list: {missing}"
    unknown = sorted(set(documented) - set(tw_settings.FIELDS))
    assert not unknown, f"the table lists variables settings.FIELDS does not have: {unknown}"


def test_defaults_match_settings(rows: list[Row]) -> None:
    actual = defaults()
    wrong = []
    for row in rows:
        for var, shown in zip(row.variables, row.defaults, strict=True):
            if var not in actual:
                continue  # reported by test_every_variable_is_documented_once
            assert actual[var] is not NO_VALUE, f"Settings has no default for {var}"
            if not same(shown, actual[var]):
                wrong.append(f"table line {row.line}: {var} default shown as {shown!r}, "
                             f"but Settings says {actual[var]!r}")
    assert not wrong, "\n".join(wrong)


def test_options_belong_to_serve(rows: list[Row]) -> None:
    """Each option is in `taskworker serve --help` (`dashboard --help` for the
    dashboard's settings), and its help names the row's variable."""
    helps = {command: " ".join(subprocess.run(  # click wraps lines anywhere between words
        [sys.executable, "-m", "taskworker", command, "--help"], capture_output=True,
        text=True, timeout=60, cwd=ROOT, check=True).stdout.split())
        for command in ("serve", "dashboard")}
    options = [(row, option) for row in rows for option in row.options]
    assert options, "no --option in the configuration table"
    for row, option in options:
        command = "dashboard" if row.variables[0].startswith("DASHBOARD_") else "serve"
        flat = helps[command]
        m = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])(.*?)(?= -\w, --| --|$)", flat)
        assert m, f"table line {row.line}: {option} is not an option of taskworker {command}"
        env = re.findall(r"\[env ([A-Z0-9_]+)", m.group(1))
        assert env and env[0] in row.variables, (
            f"table line {row.line}: {command} --help says {option} sets {env}, "
            f"the table says {row.variables}")


def test_installing_lists_what_installing_pulls_in() -> None:
    """The table names every dependency, and the command that installs them by hand
    names the same ones, psycopg2 in place of psycopg2-binary."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in declared}
    section = INSTALL_PAGE.read_text("utf-8")
    table = {m.lower() for m in re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)}
    assert table == names
    by_hand = [line for line in re.findall(r"^pip install (?!--)(.+)$", section, flags=re.M)
               if "psycogreen" in line.split()]
    assert by_hand, "no `pip install <dependencies>` line"
    assert {w.lower() for w in by_hand[0].split()} == (
        names - {"psycopg2-binary"} | {"psycopg2"})
    assert re.search(r"^pip install --no-deps \./taskworker$", section, flags=re.M)


def hooks_module() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_log_line_is_listed_and_the_table_of_common_ones_is_true() -> None:
    """The log reference lists every logging call of the package (none whose message
    is not a literal, which it could not show), and each line of its hand-written table
    of the common lines has the shape of one of them."""
    page = (ROOT / "docs" / "reference" / "logs.md").read_text("utf-8")
    assert "<!-- every-log-line -->" in page
    hooks = hooks_module()
    found, unread = hooks.log_calls()
    assert not unread, f"logging calls whose message is not a literal: {unread}"
    listed = hooks.log_table()
    for line in ("Fetched N tasks", "[Worker N] Processing task ID: N with payload: …",
                 "All workers have completed, shutdown successful"):
        assert f"`{line}`" in listed, line
    shapes = [re.compile(".*".join(".+?".join(re.escape(part) for part in piece.split("%d"))
                                   for piece in re.split(r"%[sr]|%\.?\d*[fg]", text)) + ".*")
              for _module, _level, text in found
              if len(re.sub(r"%\.?\d*[dsrfg]", "", text)) >= 8]  # not a bare "%s"
    common = page.split("| Line | When |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`", common, flags=re.M)
    assert len(rows) > 10, common
    unknown = [row for row in rows if not any(s.fullmatch(row.removesuffix(" ...")
                                                          .removesuffix(": ...")) for s in shapes)]
    assert not unknown, f"lines of the table that no logging call writes: {unknown}"


def test_the_supported_pythons_are_those_ci_tests() -> None:
    """"What is supported" names the Python versions tox's envlist tests, no more."""
    import configparser

    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    tested = {f"3.{minor}" for minor in re.findall(r"\bpy3(\d+)\b", tox["tox"]["envlist"])}
    page = (ROOT / "docs" / "releasing.md").read_text("utf-8")
    line = re.search(r"^- \*\*Python\*\* (.+)$", page, flags=re.M)
    assert line, "no **Python** line under What is supported"
    assert set(re.findall(r"\b3\.\d+\b", line.group(1))) == tested, line.group(0)
