"""Every SQL statement taskworker sends, loaded by name from queries.sql.

Keeping the statements in one file means a reader looking for "the claim" finds
it in one place, and a change to a statement is a change to one block.
"""
from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    return parse(resources.files("taskworker.store").joinpath("queries.sql").read_text("utf-8"))


def parse(text: str) -> dict[str, str]:
    """The blocks of a queries.sql text by name, without their comment lines (the
    benchmark also reads an older commit's file with it)."""
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # The description lines are for readers, not for the server.
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


QUERIES: dict[str, str] = _load()


def __getattr__(name: str) -> str:
    """`sql.claim` is the text of the block named claim."""
    try:
        return QUERIES[name]
    except KeyError:
        raise AttributeError(f"no query named {name!r} in queries.sql") from None
