"""Which host names the dashboard answers, who may see it, which POSTs are
genuine, and the headers every response carries.

Host names (against DNS rebinding: a page of rebind.attacker.example whose name
the attacker points at 127.0.0.1 is, to the browser, of the attacker's origin,
and may read and POST to whatever answers there): a request is answered only
when its Host header names the dashboard, with any port: `localhost`, a loopback
address, the address it listens on (any IP address when it listens on all of
them, 0.0.0.0 or ::: a browser sends an address only when it was given that
address, and rebinding needs a name), or a name of DASHBOARD_HOSTS.

Authentication: DASHBOARD_PASSWORD (HTTP basic auth, user DASHBOARD_USER) and/or
DASHBOARD_TOKEN (`Authorization: Bearer TOKEN`, or once `?token=TOKEN` in a
browser, which sets a session cookie holding an HMAC of the token, never the
token itself). Without either, the dashboard serves loopback addresses only.

CSRF: a random cookie (SameSite=Strict, HttpOnly) and, in every form, a hidden
field holding its HMAC under a key of this dashboard; a POST whose field does not
match its cookie, whose Origin is not the Host it was sent to, or whose Origin or
Sec-Fetch-Site says another site sent it, is refused. Secrets are compared with
hmac.compare_digest.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from typing import NamedTuple

from ..parsers import host_name
from ..settings import Settings

LOOPBACK_NAMES = ("localhost",)  # besides the loopback addresses
ALL_ADDRESSES = ("0.0.0.0", "::")
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
    """Host names, authentication and CSRF of one dashboard."""

    def __init__(self, settings: Settings) -> None:
        try:
            listening = host_name(settings.dashboard_host)
        except ValueError:  # no address to bind: starting fails, and says why
            listening = LOOPBACK_NAMES[0]
        self.any_address = listening in ALL_ADDRESSES
        self.names = frozenset({*LOOPBACK_NAMES, *settings.dashboard_hosts,
                                *(() if self.any_address else (listening,))})
        self.user = settings.dashboard_user
        self.password = settings.dashboard_password
        self.token = settings.dashboard_token
        configured = (self.password or "") + "\0" + (self.token or "")
        # A key derived from the secrets keeps forms valid across restarts and
        # between processes; without secrets, a key of this process.
        self.key = (hashlib.sha256(b"taskworker dashboard\0" + configured.encode()).digest()
                    if self.password or self.token else secrets.token_bytes(32))

    def serves(self, host: str | None) -> bool:
        """Does `host` (a Host header, or an Origin's host and port) name this
        dashboard? Any port is: a proxy or a port mapping changes it, and
        rebinding forges the name, not the port."""
        found = _authority(host or "")
        if found is None:
            return False
        try:
            name = host_name(found)
        except ValueError:
            return False
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address

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
        if origin is not None:
            scheme, _, host = origin.lower().partition("://")
            if (scheme not in ("http", "https") or not self.serves(host)
                    or not _same(host, headers.get("host", "").lower())):
                return False
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        cookie = cookies.get(CSRF_COOKIE, "")
        return bool(cookie) and bool(field) and _same(field, self.form_token(cookie))


def _authority(value: str) -> str | None:
    """The host of `host[:port]` (`[v6]:port` for an IPv6 address); None when
    malformed."""
    m = re.fullmatch(r"(\[[0-9a-f.]*:[0-9a-f:.]*\]|[^:\[\]]*)(?::[0-9]{1,5})?",
                     value.strip().lower())
    return m.group(1) if m and m.group(1) else None


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
