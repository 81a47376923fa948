"""The dashboard as a WSGI application, and the gevent server that runs it.

Every request passes, in order: the Host check and authentication
(security.Guard), the routing table, for a POST the read-only switch and the
CSRF check, then its handler. A database that cannot answer gives a 503 page
saying so in general terms (the pool logs what happened, once); any other
failure a 500 page and one log line, never a traceback. No page names the
connection: its URL, host, port, user or database.
"""
from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer

from .. import __version__
from ..listening import shown, start_server
from ..logs import log
from ..settings import DEFAULT_DASHBOARD_PORT, Settings
from ..store.database import first_line
from . import actions, pages
from .http import Request, Response, StartResponse, local_path, redirect, url
from .indexer import Indexer
from .pool import Pool, Unavailable
from .render import Templates
from .sampler import Sampler
from .security import CSRF_COOKIE, SESSION_COOKIE, Guard, Visitor, new_csrf_cookie

FLASH_COOKIE = "tw_flash"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
Handler = Callable[..., Response]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/"), pages.overview),
    ("GET", re.compile(r"/overview/live"), pages.overview_live),
    ("GET", re.compile(r"/tasks"), pages.tasks),
    ("GET", re.compile(r"/tasks/([0-9]+)"), pages.task),
    ("GET", re.compile(r"/tasks/([0-9]+)/raw/([a-z_]+)"), pages.raw),
    ("GET", re.compile(r"/schedules"), pages.schedules),
]
ACTION = re.compile(r"/actions/(retry|cancel|delete)")
STATIC = re.compile(r"/static/([a-z]+\.(?:css|js|svg))")


class DashboardError(Exception):
    """The dashboard cannot start; str() is one line for the user."""


class Dashboard:
    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.host = settings.dashboard_host
        self.port = port or settings.dashboard_port or DEFAULT_DASHBOARD_PORT
        self.readonly = settings.dashboard_readonly
        self.guard = Guard(settings)
        self.pool = Pool(settings)
        self.sampler = Sampler(self.pool)
        self.indexer = Indexer(self.pool)
        self.templates = Templates()
        self._server: WSGIServer | None = None
        self._sampling: gevent.Greenlet | None = None
        self._indexing: gevent.Greenlet | None = None

    # --- running

    def start(self) -> None:
        """Bind and start answering; DashboardError when the address cannot be used."""
        self._server = start_server(self.host, self.port, self.app, spawn=100,
                                    what="the dashboard", error=DashboardError)
        self._sampling = gevent.spawn(self.sampler.run)
        self._indexing = gevent.spawn(self.indexer.run)
        log.info("Dashboard on http://%s/%s%s", shown(self.host, self.port),
                 " (read-only)" if self.readonly else "",
                 "" if self.guard.required else " (no authentication: loopback only)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
        for greenlet in (self._sampling, self._indexing):
            if greenlet is not None:
                greenlet.kill()
        self.pool.close()

    # --- answering

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.respond(request)
        except Unavailable as exc:
            response = self.page(request, "error.html", status=503, problem=str(exc))
        except Exception as exc:
            log.error("Dashboard: %s %s failed: %s: %s", request.method, request.path,
                      type(exc).__name__, first_line(exc))
            response = self.page(request, "error.html", status=500,
                                 problem="the dashboard failed to answer (see its log)")
        return response.send(start_response)

    def respond(self, request: Request) -> Response:
        host = request.headers.get("host")
        if not self.guard.serves(host):
            return self.misdirected(request, host)
        visitor = self.guard.visitor(request.headers, request.cookies, request.address)
        token = request.query.get("token")
        if token is not None and request.method == "GET" and self.guard.token_matches(token):
            rest = {k: v for k, v in request.query.items() if k != "token"}
            return redirect(url(local_path(request.path), rest)).cookie(
                SESSION_COOKIE, self.guard.session_value())
        if visitor is None:
            return self.unauthorized(request)
        static = STATIC.fullmatch(request.path)
        if static:
            return self.static(request, static.group(1))
        action = ACTION.fullmatch(request.path)
        if action:
            return self.act(request, action.group(1), visitor)
        for method, pattern, handler in ROUTES:
            match = pattern.fullmatch(request.path)
            if match:
                if request.method not in (method, "HEAD"):
                    return self.page(request, "error.html", status=405,
                                     problem=f"{request.method} is not answered here")
                self.sampler.watched()
                return handler(self, request, *match.groups())
        return self.page(request, "missing.html", status=404, what=request.path)

    def act(self, request: Request, action: str, visitor: Visitor) -> Response:
        if self.readonly:
            return self.page(request, "error.html", status=403,
                             problem="the dashboard is read-only (DASHBOARD_READONLY)")
        if request.method == "GET":
            return actions.confirm(self, request, action)
        if request.method != "POST":
            return self.page(request, "error.html", status=405,
                             problem=f"{request.method} is not answered here")
        if not self.guard.genuine(request.headers, request.cookies,
                                  request.form.get("csrf", "")):
            log.warning("Dashboard: refused a %s from %s without a valid CSRF token",
                        action, request.address)
            return self.page(request, "error.html", status=403,
                             problem="this form has expired or was not sent by this "
                                     "dashboard: reload the page and try again")
        return actions.perform(self, request, action, visitor)

    def misdirected(self, request: Request, host: str | None) -> Response:
        """421 for a Host this dashboard does not serve (DNS rebinding, or a name
        missing from DASHBOARD_HOSTS): a short plain answer, no page."""
        shown = "no Host header" if host is None else f"host {host[:100]!r}"
        log.warning("Dashboard: refused a %s from %s for %s: not a name this dashboard "
                    "serves (DASHBOARD_HOSTS)", request.method, request.address, shown)
        return Response(f"This dashboard does not answer for {shown}: DASHBOARD_HOSTS "
                        "lists the names it serves besides the loopback ones.\n", 421,
                        content_type="text/plain; charset=utf-8")

    def unauthorized(self, request: Request) -> Response:
        response = self.page(request, "error.html", status=401,
                             problem="authentication required (DASHBOARD_PASSWORD or "
                                     "DASHBOARD_TOKEN)", plain=True)
        if self.guard.password:
            response.headers.append(("WWW-Authenticate",
                                     'Basic realm="taskworker dashboard", charset="UTF-8"'))
        return response

    def static(self, request: Request, name: str) -> Response:
        path = resources.files("taskworker.dashboard").joinpath("static", name)
        if not path.is_file():
            return self.page(request, "missing.html", status=404, what=request.path)
        response = Response(path.read_bytes(), content_type=STATIC_TYPES[name[name.rfind("."):]])
        return response

    # --- pages

    def page(self, request: Request, template: str, status: int = 200,
             plain: bool = False, **context: Any) -> Response:
        """Render `template` with what every page shows: the CSRF field of the
        visitor's cookie (set now if it has none), the read-only switch, a message
        left by the last action."""
        cookie = request.cookies.get(CSRF_COOKIE)
        new_cookie = None if cookie else new_csrf_cookie()
        flash = None if plain else self._flash(request)
        body = self.templates.render(
            template, csrf=self.guard.form_token(cookie or new_cookie or ""),
            readonly=self.readonly, flash=flash, version=__version__,
            path=local_path(request.path),
            **context)
        response = Response(body, status)
        if new_cookie:
            response.cookie(CSRF_COOKIE, new_cookie)
        if flash is not None:
            response.cookie(FLASH_COOKIE, "", max_age=0)
        return response

    def flash(self, response: Response, message: str) -> Response:
        """Leave `message` for the next page (a signed cookie: no other site can forge it)."""
        data = base64.urlsafe_b64encode(message[:1000].encode()).decode().rstrip("=")
        return response.cookie(FLASH_COOKIE, f"{data}.{self._sign(data)}")

    def _flash(self, request: Request) -> str | None:
        data, _, signature = request.cookies.get(FLASH_COOKIE, "").partition(".")
        if not data or not hmac.compare_digest(signature, self._sign(data)):
            return None
        try:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()
        except ValueError:
            return None

    def _sign(self, data: str) -> str:
        return hmac.new(self.guard.key, b"flash\0" + data.encode(), "sha256").hexdigest()[:32]
