"""Variables that look like settings but are not one: a typo (`WORKER_CONT=10`,
`TASK_HANDLR` in .env) would otherwise be ignored without a word, the default
used instead. `misspelled` says which, and which setting each resembles."""
from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from .settings import FIELDS

# Prefixes no other program's variables are expected to share: an unknown variable
# with one of them in the environment is taken for a mistyped setting.
PREFIXES = ("TASKWORKER_", "TASK_", "WORKER_", "FETCH_", "DASHBOARD_", "METRICS_", "LEASE_",
            "PRUNE_")


def misspelled(dotenv: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """One warning line per variable that looks like a setting but is not one
    (never with its value, which may be a secret).

    In .env (`dotenv`), which taskworker reads for its settings alone, every
    unknown upper-case name; a name like a setting's (difflib), with one of
    PREFIXES or a setting's name in another case gets a line of its own, the
    others share one. In the environment, only a name a typo away from a
    setting's (two edits; one for a setting of 7 letters or fewer), a setting's
    name in another case, or a name with one of PREFIXES: PATH, PG* (libpq's),
    TEST_DATABASE_URL, LISTEN_FDS (systemd's) are someone else's.
    """
    lines, others = [], []
    for name in dotenv:
        if name in FIELDS or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if name.startswith("PG"):
            lines.append(f"{name} in .env is ignored: libpq reads PG variables from the "
                         "environment only")
        elif _near(name) or _like(name) or name.upper() in FIELDS or name.startswith(PREFIXES):
            lines.append(_not_a_setting(name, ".env"))
        elif name.isupper():
            others.append(name)
    if others:
        lines.append(f".env sets {', '.join(others)}, which taskworker ignores: it reads "
                     ".env for its own settings alone")
    for name in environ:
        if name in FIELDS or name in dotenv or name.startswith("PG"):
            continue
        if _near(name) or name.upper() in FIELDS or name.startswith(PREFIXES):
            lines.append(_not_a_setting(name, "the environment"))
    return lines


def _not_a_setting(name: str, where: str) -> str:
    meant = _near(name) or _like(name)
    hint = f": did you mean {meant[0]}?" if meant else ""
    return f"{name} in {where} is not a setting, ignored{hint}"


def _near(name: str) -> list[str]:
    """The setting `name` is a typo of: within two edits (one for a short name)."""
    upper = name.upper()
    for setting in FIELDS:
        if abs(len(setting) - len(upper)) <= 2 and \
                _edits(upper, setting) <= (1 if len(setting) <= 7 else 2):
            return [setting]
    return []


def _like(name: str) -> list[str]:
    """The setting `name` most resembles, if any resembles it closely (difflib)."""
    return difflib.get_close_matches(name.upper(), FIELDS, 1, 0.75)


def _edits(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`."""
    before, row = None, list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            cost = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (x != y))
            if before is not None and i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, before[j - 2] + 1)
            current.append(cost)
        before, row = row, current
    return row[-1]
