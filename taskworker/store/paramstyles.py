"""The statements of queries.sql in the parameter styles of other drivers.

queries.sql writes parameters as psycopg2 takes them, `%(name)s`, which psycopg 3
and Django's cursors take too. PREPARE and asyncpg number them (`$1`), and
SQLAlchemy's `text()` names them `:name`. They are converted here, mechanically
and once per statement (cached), so that no statement is written twice.
"""
from __future__ import annotations

import functools
import re

_PARAM = re.compile(r"%\((\w+)\)s|%%")


@functools.cache
def numbered(statement: str, percent: str = "%") -> tuple[str, tuple[str, ...]]:
    """`statement` with `$1`, `$2`... for its parameters (a name used twice is
    one number), and the names in number order. `%%` becomes `percent`: a
    literal % for asyncpg; PREPARE's text goes through psycopg2, which wants `%%`."""
    names: dict[str, int] = {}

    def number(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return percent
        return f"${names.setdefault(m.group(1), len(names) + 1)}"

    return _PARAM.sub(number, statement), tuple(names)


@functools.cache
def colon(statement: str) -> str:
    """`statement` with `(:name)` for each parameter, as SQLAlchemy's `text()`
    reads them. In parentheses: `:name::jsonb` would be read as a parameter
    `:name:` cut short, `(:name)::jsonb` is not."""
    return _PARAM.sub(lambda m: "%" if m.group(1) is None else f"(:{m.group(1)})", statement)
