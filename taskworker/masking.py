"""The password of a PostgreSQL connection string, masked: in the string itself
(`mask_password`, for our log lines) and in any text that may quote it
(`mask_secrets`: libpq's and the server's messages we relay, a traceback).

The password is found where libpq reads it, by libpq's rules (a URL's user info
ends at the first `@` unless a `/` comes first, so `#` and `?` belong to the
password; a `key=value` value is quoted with `'` and escaped with `\\`), and also
where the user evidently meant it when libpq reads the string otherwise: a raw
`@` or `/` in a URL's password, a space in an unquoted `password=` value, a URL
typed without its scheme (`tw:PW@127.0.0.1`). Masking a little more than the
password in such a mistyped string is the price of never showing any of it.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from urllib.parse import unquote

MASK = "****"
SHORT = 4  # a secret shorter than this is masked in a text only where it stands alone

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")  # postgresql:// (or any typed scheme)
_USER_INFO = re.compile(r"[^@/]*@")  # libpq: up to the first '@', unless a '/' comes first
_QUERY_PASSWORD = re.compile(r"[?&]password=")
_NEXT_PARAMETER = re.compile(r"&[A-Za-z_][A-Za-z0-9_]*=")
_KEYWORD = re.compile(r"([^=\s]*)\s*=\s*")  # libpq: name, blanks, '=', blanks
_NEXT_KEYWORD = re.compile(r"\s+[^=\s']+\s*=")
_QUERY_LIKE = re.compile(r"\?[^@]*=")  # ?key=value: a query, not a password with a '?'
_PIECES = re.compile(r"[@/:,?&=\s'\\]+")  # where libpq splits what it misread


@functools.lru_cache(maxsize=64)
def _spans(conninfo: str) -> tuple[tuple[int, int, bool], ...]:
    """(start, end, exact) of every place `conninfo` holds a password: exact when
    libpq reads it so, else where the user evidently meant one."""
    scheme = _SCHEME.match(conninfo)
    if scheme:
        return tuple(_url_spans(conninfo, scheme.end()))
    spans, whole = _keyword_spans(conninfo)
    if not whole and not spans:  # not key=value either: `user:pw@host` without a scheme
        spans = [(a, b, False) for a, b, _ in _url_spans(conninfo, 0)]
    return tuple(spans)


def _url_spans(url: str, start: int) -> list[tuple[int, int, bool]]:
    spans = []
    info = _USER_INFO.match(url, start)
    if info:
        colon = url.find(":", start, info.end() - 1)
        if colon >= 0:
            spans.append((colon + 1, info.end() - 1, True))
    # Typed with a raw '@' or '/' in the password, which libpq reads as host or
    # path: the user info runs to the last '@' before the path.
    first_at = url.find("@", start)
    if first_at >= 0:
        slash = url.find("/", first_at)
        at = url.rfind("@", start, slash if slash >= 0 else len(url))
        colon = url.find(":", start, at)
        if colon >= 0 and not _QUERY_LIKE.search(url, colon, at) \
                and (colon + 1, at, True) not in spans:
            spans.append((colon + 1, at, False))
    for m in _QUERY_PASSWORD.finditer(url, start):
        nxt = _NEXT_PARAMETER.search(url, m.end())
        end = nxt.start() if nxt else len(url)
        exact = url.find("&", m.end(), end) < 0  # a raw '&' inside: libpq reads less
        spans.append((m.end(), end, exact))
    return spans


def _keyword_spans(dsn: str) -> tuple[list[tuple[int, int, bool]], bool]:
    """Spans of the password values of a `key=value` string, and whether libpq
    reads the whole string (as conninfo_parse in libpq's fe-connect.c)."""
    spans: list[tuple[int, int, bool]] = []
    i, n = 0, len(dsn)
    while i < n:
        if dsn[i].isspace():
            i += 1
            continue
        m = _KEYWORD.match(dsn, i)
        if not m:
            return spans, False
        key, start = m.group(1), m.end()
        i, quoted = start, dsn.startswith("'", start)
        if quoted:
            i += 1
            while i < n and dsn[i] != "'":
                i += 2 if dsn[i] == "\\" else 1
            if i >= n:  # unterminated: libpq refuses the string
                if key == "password":
                    spans.append((start, n, False))
                return spans, False
            i += 1
        else:
            while i < n and not dsn[i].isspace():
                i += 2 if dsn[i] == "\\" else 1
            i = min(i, n)
        if key == "password":
            spans.append((start, i, True))
            if not quoted:  # `password=two words` meant one value: to the next key=
                nxt = _NEXT_KEYWORD.search(dsn, i)
                end = nxt.start() if nxt else len(dsn.rstrip())
                if end > i:
                    spans.append((start, end, False))
    return spans, True


def mask_password(conninfo: str) -> str:
    """`conninfo` (a URL, with one host or several, or a key=value string) with
    its password written as ****: in the user info, in `?password=`, in
    `password=`, however it is quoted or encoded."""
    merged: list[list[int]] = []
    for a, b, _ in sorted(span for span in _spans(conninfo) if span[1] > span[0]):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, last = [], 0
    for a, b in merged:
        out += [conninfo[last:a], MASK]
        last = b
    return "".join(out) + conninfo[last:]


@functools.lru_cache(maxsize=64)
def secrets(conninfo: str) -> tuple[str, ...]:
    """Every form in which a text may quote the password of `conninfo`, longest
    first: as written, decoded (%40 is @, \\' is '), as libpq reads it, and, when
    libpq reads the string otherwise than it was meant, the pieces it splits the
    password into."""
    found: set[str] = set()
    pieces: set[str] = set()
    for a, b, exact in _spans(conninfo):
        raw = conninfo[a:b]
        forms = {raw, unquote(raw), _unescape(raw)}
        found |= forms
        if not exact:
            pieces |= {p for form in forms for p in _PIECES.split(form)}
    try:
        from psycopg2.extensions import parse_dsn  # libpq's own reading

        found.add(parse_dsn(conninfo).get("password") or "")
    except Exception:  # not a connection string libpq reads: the spans say it all
        pass
    return tuple(sorted((s for s in found | pieces if s), key=lambda s: (-len(s), s)))


def _unescape(value: str) -> str:
    """A key=value value as libpq reads it: quotes dropped, backslash escapes undone."""
    if value.startswith("'"):
        value = value[1:-1] if value.endswith("'") and len(value) > 1 else value[1:]
    return re.sub(r"\\(.)", r"\1", value)


@functools.lru_cache(maxsize=64)
def _masker(found: tuple[str, ...]) -> Callable[[str], str] | None:
    if not found:
        return None
    alternatives = [re.escape(s) if len(s) >= SHORT
                    else rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])" for s in found]
    pattern = re.compile("|".join(alternatives))
    return functools.partial(pattern.sub, MASK)


def mask_secrets(text: str, conninfo: str) -> str:
    """`text` (libpq's or the server's message, a traceback...) with every
    occurrence of the password of `conninfo` written as ****. A password (or a
    piece of one) shorter than 4 characters is masked only where it stands
    alone, not inside a word."""
    masker = _masker(secrets(conninfo))
    return masker(text) if masker else text
