"""Arguments and return values as JSON: what a task's row can carry.

A call is stored as {"args": [...], "kwargs": {...}} in the row's `arguments`
(jsonb), a return value as JSON in `return_value`: readable and queryable in
SQL, and the same in every language. JSON carries None, bool, int, float, str,
lists (a tuple arrives as a list) and dicts with str keys. Everything else is
refused before anything is sent, with a message saying how to pass it:
`datetime`, `date`, `time`, `UUID` and `Decimal` are not silently turned into
strings (the function would receive a str where it expected the object), and
NaN, infinities and NUL characters are refused because PostgreSQL's jsonb
cannot hold them.

This module imports neither gevent nor the database driver.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

MAX_DEPTH = 100  # nesting a value may have (deeper is a cycle, or a mistake)

_HOW = {  # how to pass what JSON cannot carry
    datetime: "pass value.isoformat() and datetime.fromisoformat() it in the task",
    date: "pass value.isoformat() and date.fromisoformat() it in the task",
    time: "pass value.isoformat() and time.fromisoformat() it in the task",
    UUID: "pass str(value) and UUID() it in the task",
    Decimal: "pass str(value) and Decimal() it in the task (a float would lose digits)",
    bytes: "pass value.decode() or base64 text",
    set: "pass a sorted list",
    frozenset: "pass a sorted list",
}


_PLAIN = (int, float, str, list, tuple, dict)


class NotJSON(TypeError):
    """A value JSON cannot carry; str() names where it is and what to do."""


# Built once: json.dumps with any option builds an encoder per call (most of
# the cost of encoding a small value); json.loads without one uses its own.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.JSONDecoder().decode
_CALL_KEYS = frozenset(("args", "kwargs"))
_NOT_A_CALL = 'arguments must be a JSON object {"args": [...], "kwargs": {...}}'


def encode_call(args: Sequence[Any], kwargs: Mapping[str, Any], where: str) -> str:
    """The `arguments` of a call, as JSON text; raises NotJSON naming the
    argument (`where` says whose call: "send_email()")."""
    for n, value in enumerate(args):
        if not _plain(value, 0):
            check(value, f"{where}: argument {n + 1}")
    for name, value in kwargs.items():
        if not _plain(value, 0):
            check(value, f"{where}: argument {name!r}")
    return _dumps({"args": list(args), "kwargs": dict(kwargs)})


def decode_call(text: str) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a row's `arguments`. Raises ValueError when the row
    holds something else (written by hand in SQL, say)."""
    call = _loads(text)
    if type(call) is not dict or not call.keys() <= _CALL_KEYS:
        raise ValueError(_NOT_A_CALL)
    args, kwargs = call.get("args", []), call.get("kwargs", {})
    if type(args) is not list or type(kwargs) is not dict:
        raise ValueError(_NOT_A_CALL)
    return args, kwargs


def encode(value: Any, where: str) -> str:
    """`value` as JSON text; raises NotJSON naming where it is."""
    if not _plain(value, 0):
        check(value, where)
    return _dumps(value)


def decode(text: str) -> Any:
    """A value stored as JSON text (a return value), as Python."""
    return _loads(text)


def _text(value: str) -> bool:
    """Can jsonb hold this text? No NUL, and valid Unicode (a lone surrogate such
    as "\\ud800", which Python strings may hold, has no UTF-8 form)."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any, depth: int) -> bool:
    """Can JSON (and jsonb) carry `value` as it is? `check`'s walk without the
    names of the places it passes (built only to say where a value fails)."""
    kind = type(value)
    if kind is str:
        return _text(value)
    if value is None or kind is int or kind is bool:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if kind is list or kind is tuple:
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _text(key) or not _plain(item, depth + 1):
                return False
        return True
    return False


def check(value: Any, where: str, depth: int = 0) -> None:
    """Raise NotJSON unless JSON (and jsonb) can carry `value` as it is."""
    if value is None or value is True or value is False:
        return
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise NotJSON(f"{where} contains a NUL character, which PostgreSQL's jsonb "
                          "cannot hold")
        if not _text(value):
            raise NotJSON(f"{where} holds a lone surrogate (half of a UTF-16 pair), which "
                          "is not valid text: pass valid Unicode")
        return
    if kind is int:
        return
    if kind is float:
        if not math.isfinite(value):
            raise NotJSON(f"{where} is {value!r}, which JSON cannot carry: pass None or "
                          "a string")
        return
    if depth >= MAX_DEPTH:
        raise NotJSON(f"{where} is nested more than {MAX_DEPTH} levels deep (a cycle?)")
    if kind is list or kind is tuple:
        for n, item in enumerate(value):
            check(item, f"{where}[{n}]", depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise NotJSON(f"{where} has the key {key!r} ({type(key).__name__}): JSON "
                              "object keys are strings; pass str keys")
            check(key, f"{where} key", depth + 1)
            check(item, f"{where}[{key!r}]", depth + 1)
        return
    for known, how in _HOW.items():
        if isinstance(value, known):
            raise NotJSON(f"{where} is a {kind.__name__}, which JSON cannot carry: {how}")
    plain = next((b for b in kind.__mro__ if b in _PLAIN), None)
    if plain is not None:  # an Enum of int, a namedtuple, an OrderedDict...
        raise NotJSON(f"{where} is a {kind.__name__}, which JSON would give back as a "
                      f"plain {plain.__name__}: pass a {plain.__name__}")
    raise NotJSON(f"{where} is a {kind.__name__}, which JSON cannot carry: pass None, "
                  "bool, int, float, str, or lists and dicts of them")


def readable(value: Any) -> str:
    """A decoded JSON value (an `arguments` or `return_value` as psycopg2 reads
    jsonb) as indented JSON text, for people: `taskworker show`, the dashboard."""
    return json.dumps(value, indent=2, ensure_ascii=False)
