"""Array parameters written as PostgreSQL array literals, for the batches of
outcomes the completion sends (seven arrays of up to a thousand elements) and
the lists of ids a busy process sends (the heartbeat's and the rescue's: every
task it holds, ten thousand with WORKER_COUNT=10000).

psycopg2 adapts a Python list element by element into `ARRAY[...]` syntax: 2.8 ms
for a batch of 1,000 outcomes, a quarter of serve's own CPU per no-op task. The
same values as one literal string each (`'{1,2,3}'`, cast by the statement's
`::bigint[]`) take a fifth of that. No database here.
"""
from __future__ import annotations

from collections.abc import Iterable


def numbers(values: Iterable[int | float | None]) -> str:
    """`{1,2,NULL}`: ints or floats (their repr reads back exactly)."""
    return "{" + ",".join("NULL" if v is None else repr(v) for v in values) + "}"


def texts(values: Iterable[str | None]) -> str:
    """`{"a","b \\"c\\"",NULL}`: every element quoted (so "NULL", "" and spaces
    stay text), backslashes and double quotes escaped."""
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values) + "}"


def booleans(values: Iterable[bool]) -> str:
    """`{t,f}`."""
    return "{" + ",".join("t" if v else "f" for v in values) + "}"
