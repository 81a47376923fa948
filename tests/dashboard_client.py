"""`taskworker dashboard` as a user starts it (a subprocess on a free port), and
an HTTP client that keeps its cookies like a browser, for the dashboard tests.

No gevent, no taskworker import: plain http.client from the pytest process.
"""
from __future__ import annotations

import base64
import http.client
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

from pgserver import free_port
from proc import CLI, ServeProcess

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status = status
        self.headers = headers  # lower-case names; repeated ones joined by "\n"
        self.body = body

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:300]!r}>"

    @property
    def text(self) -> str:
        """The page's visible text, roughly: tags dropped, entities decoded."""
        return unescape(re.sub(r"<[^>]+>", " ", self.body))


class Client:
    """Speaks HTTP to one dashboard, keeping the cookies it sets."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None,
                 token: str | None = None) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(
                f"{auth[0]}:{auth[1]}".encode()).decode()
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: str | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            raw = response.read().decode("utf-8", "replace")
            found: dict[str, str] = {}
            for name, value in response.getheaders():
                key = name.lower()
                found[key] = f"{found[key]}\n{value}" if key in found else value
                if key == "set-cookie":
                    cookie, _, attributes = value.partition(";")
                    k, _, v = cookie.partition("=")
                    if "Max-Age=0" in attributes:
                        self.cookies.pop(k.strip(), None)
                    else:
                        self.cookies[k.strip()] = v.strip()
            return Reply(response.status, found, raw)
        finally:
            conn.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: Mapping[str, object],
             headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("POST", path, urlencode({k: str(v) for k, v in fields.items()}),
                            headers)

    def confirm(self, path: str) -> Reply:
        """Open a confirmation page and submit its form, as a user clicking it."""
        page = self.get(path)
        assert page.status == 200, page
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                                 page.body))
        action = re.search(r'<form method="post" action="([^"]+)"', page.body)
        assert action, page.body
        return self.post(action.group(1), {k: unescape(v) for k, v in fields.items()})


class DashboardProcess(ServeProcess):
    """A running `taskworker dashboard` (or any command serving it) and its port."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log_path: Path,
                 args: tuple[str, ...] = (), port: int | None = None,
                 command: str = "dashboard") -> None:
        self.port = port or free_port()
        argv = [*CLI, command, *args]
        env = {"DASHBOARD_PORT": str(self.port), **env}
        super().__init__((), env, str(cwd), str(log_path), command=argv)

    def client(self, **kwargs: object) -> Client:
        return Client(self.port, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.signal(signal.SIGINT)
            self.wait(15)


@contextmanager
def running_dashboard(db_url: str, tmp_path: Path, env: Mapping[str, str] | None = None,
                      args: tuple[str, ...] = (), name: str = "dashboard",
                      ) -> Iterator[DashboardProcess]:
    """`taskworker dashboard` against `db_url`, ready to answer; stopped after."""
    cwd = tmp_path / f"{name}-cwd"
    cwd.mkdir(exist_ok=True)
    d = DashboardProcess({"DATABASE_URL": db_url, **(env or {})}, cwd,
                         tmp_path / f"{name}.log", args)
    try:
        d.wait_for(r"Dashboard on http://", 30)
        yield d
    finally:
        d.kill()
