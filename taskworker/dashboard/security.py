"""Who may see the dashboard, which POSTs are genuine, and the headers every
response carries.

Authentication: DASHBOARD_PASSWORD (HTTP basic auth, user DASHBOARD_USER) and/or
DASHBOARD_TOKEN (`Authorization: Bearer TOKEN`, or once `?token=TOKEN` in a
browser, which sets a session cookie holding an HMAC of the token, never the
token itself). Without either, the dashboard serves loopback addresses only.

CSRF: a random cookie (SameSite=Strict, HttpOnly) and, in every form, a hidden
field holding its HMAC under a key of this dashboard; a POST whose field does not
match its cookie, or whose Origin or Sec-Fetch-Site says another site sent it, is
refused. Secrets are compared with hmac.compare_digest.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from typing import NamedTuple

from ..settings import Settings

CSRF_COOKIE = "tw_csrf"
SESSION_COOKIE = "tw_session"
HEADERS = [
    ("Content-Security-Policy",
     "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
]


def is_loopback(host: str) -> bool:
    """Does `host` (DASHBOARD_HOST) accept connections from this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def refusal(settings: Settings, host: str) -> str | None:
    """Why the dashboard may not listen on `host` as configured (None: it may)."""
    if is_loopback(host) or settings.dashboard_password or settings.dashboard_token:
        return None
    return (f"the dashboard would listen on {host} without authentication: set "
            "DASHBOARD_PASSWORD (HTTP basic auth) or DASHBOARD_TOKEN, or listen on 127.0.0.1")


class Visitor(NamedTuple):
    """Who sent a request, as the log names them."""

    name: str  # the basic-auth user, "token", or "anonymous" (no auth configured)
    address: str


class Guard:
    """Authentication and CSRF of one dashboard."""

    def __init__(self, settings: Settings) -> None:
        self.user = settings.dashboard_user
        self.password = settings.dashboard_password
        self.token = settings.dashboard_token
        configured = (self.password or "") + "\0" + (self.token or "")
        # A key derived from the secrets keeps forms valid across restarts and
        # between processes; without secrets, a key of this process.
        self.key = (hashlib.sha256(b"taskworker dashboard\0" + configured.encode()).digest()
                    if self.password or self.token else secrets.token_bytes(32))

    @property
    def required(self) -> bool:
        return bool(self.password or self.token)

    def session_value(self) -> str:
        """The session cookie a valid ?token= sets."""
        assert self.token
        return hmac.new(self.token.encode(), b"taskworker session", "sha256").hexdigest()

    def visitor(self, headers: dict[str, str], cookies: dict[str, str],
                address: str) -> Visitor | None:
        """Who the request comes from; None when authentication is required and
        the request does not carry it."""
        if not self.required:
            return Visitor("anonymous", address)
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.password and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if _same(user, self.user) & _same(password, self.password):
                return Visitor(user, address)
        if self.token and scheme.lower() == "bearer" and _same(value.strip(), self.token):
            return Visitor("token", address)
        if self.token and _same(cookies.get(SESSION_COOKIE, ""), self.session_value()):
            return Visitor("token", address)
        return None

    def token_matches(self, given: str) -> bool:
        return bool(self.token) and _same(given, self.token or "")

    def form_token(self, cookie: str) -> str:
        """The hidden field that goes with CSRF cookie `cookie`."""
        return hmac.new(self.key, cookie.encode(), "sha256").hexdigest()

    def genuine(self, headers: dict[str, str], cookies: dict[str, str], field: str) -> bool:
        """Was this POST sent by a form of this dashboard?"""
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            host = origin.split("://", 1)[-1]
            if not _same(host, headers.get("host", "")):
                return False
        elif origin == "null":
            return False
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        cookie = cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and bool(field) and _same(field, self.form_token(cookie))


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
