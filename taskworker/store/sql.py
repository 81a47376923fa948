"""Every SQL statement taskworker sends, loaded by name from queries.sql.

Keeping the statements in one file means a reader looking for "the claim" finds
it in one place, and a change to a statement is a change to one block.
"""
from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"/\* include (\w+) \*/")  # another block's text (see parse)


def _load() -> dict[str, str]:
    return parse(resources.files("taskworker.store").joinpath("queries.sql").read_text("utf-8"))


def parse(text: str) -> dict[str, str]:
    """The blocks of a queries.sql text by name, without their comment lines (the
    benchmark also reads an older commit's file with it).

    `/* include name */` in a block stands for the text of block `name`
    (without its final `;`; its own includes expanded in turn), so that
    statements sharing a part (the row every claim writes; the outcomes'
    write) write it once. A comment, so it cannot clash with the placeholders
    callers fill: `%(name)s` for psycopg2, `{name}` for psycopg2.sql's format
    (drop_index_concurrently has one)."""
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # The description lines are for readers, not for the server.
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return {name: _expand(queries, name, ()) for name in queries}


def _expand(queries: dict[str, str], name: str, within: tuple[str, ...]) -> str:
    """Block `name` with its includes replaced by their own expanded text."""
    if name in within:
        raise ValueError(f"queries.sql: block {name!r} includes itself")

    def part(m: re.Match[str]) -> str:
        if m.group(1) not in queries:
            raise ValueError(f"queries.sql: block {name!r} includes {m.group(1)!r}, "
                             "which is not a block")
        return _expand(queries, m.group(1), (*within, name)).rstrip(";").rstrip()

    return _INCLUDE.sub(part, queries[name])


QUERIES: dict[str, str] = _load()
# What a statement is sent behind, in its own transaction: ordered_plans's
# planner settings (the claims, and the statements that find holds by id).
ORDERED = QUERIES["ordered_plans"] + "\n"


def __getattr__(name: str) -> str:
    """`sql.claim` is the text of the block named claim."""
    try:
        return QUERIES[name]
    except KeyError:
        raise AttributeError(f"no query named {name!r} in queries.sql") from None
