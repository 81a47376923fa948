"""Requests and responses over WSGI, with the standard library: urllib.parse
for query strings and urlencoded forms, http.cookies for cookies; and the two
values of a request that must be checked before use: a task id, a path to send
the browser to."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from .security import HEADERS

MAX_FORM_BYTES = 64 * 1024  # a form of the dashboard is a few hundred bytes
MAX_ID = 2**63 - 1  # ids are bigint
HOME = "/"
StartResponse = Callable[..., Any]


class Request:
    def __init__(self, environ: dict[str, Any]) -> None:
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        self.path = environ.get("PATH_INFO", "") or "/"
        self.address = environ.get("REMOTE_ADDR", "") or "?"
        self.query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        self.headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                        if k.startswith("HTTP_")}
        self.cookies: dict[str, str] = {}
        try:
            jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
            self.cookies = {name: morsel.value for name, morsel in jar.items()}
        except CookieError:
            pass
        self.form: dict[str, str] = {}
        if self.method == "POST":
            try:
                size = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                size = 0
            body = environ["wsgi.input"].read(min(size, MAX_FORM_BYTES)) if size > 0 else b""
            self.form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


class Response:
    def __init__(self, body: str | bytes = "", status: int = 200,
                 content_type: str = "text/html; charset=utf-8") -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status = status
        self.headers: list[tuple[str, str]] = [("Content-Type", content_type)]

    def cookie(self, name: str, value: str, max_age: int | None = None) -> Response:
        """Set a cookie only this site's pages send back (never across sites)."""
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.headers.append(("Set-Cookie", "; ".join(parts)))
        return self

    def send(self, start_response: StartResponse) -> Iterable[bytes]:
        headers = [*self.headers, *HEADERS, ("Content-Length", str(len(self.body)))]
        start_response(f"{self.status} {REASONS.get(self.status, 'Error')}", headers)
        return [self.body]


def redirect(location: str) -> Response:
    """303 See Other: after a POST, the browser GETs `location`."""
    response = Response("", 303)
    response.headers.append(("Location", location))
    return response


def task_id(raw: str | None) -> int | None:
    """The task id `raw` spells in ASCII digits, from 1 to MAX_ID; None for
    anything else (str.isdigit and int() take other digits too: '²', '٣')."""
    if raw is None or not re.fullmatch(r"[0-9]{1,19}", raw):
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_ID else None


def local_path(path: str) -> str:
    """`path` (a decoded PATH_INFO) as a link or a Location of this site:
    percent-encoded, or HOME unless it is a path of this site: one leading "/"
    (not "//" or "/\\", which a browser reads as another host), no control
    character."""
    if (not path.startswith("/") or path[1:2] in ("/", "\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in path)):
        return HOME
    try:  # PATH_INFO holds the request's bytes as latin-1 (PEP 3333)
        return quote(path.encode("latin-1"), safe="/")
    except UnicodeEncodeError:
        return HOME


def url(path: str, params: dict[str, Any]) -> str:
    """`path` with the non-empty `params` as its query string."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           421: "Misdirected Request",
           503: "Service Unavailable", 500: "Internal Server Error"}
