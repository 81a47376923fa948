"""serve's HTTP server on METRICS_PORT: gevent's own WSGI server (no threads).

    GET /metrics   Prometheus text format, from the process's own registry (not
                   the process-wide default one)
    GET /healthz   200 {"status": "ok", ...} or 503 {"status": "unhealthy",
                   "problems": [...]} naming what is wrong (health.py)
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pywsgi import WSGIServer
from prometheus_client import make_wsgi_app

from ..listening import shown, start_server
from ..logs import log
from ..settings import Settings
from .health import Observed, problems
from .metrics import Metrics

StartResponse = Callable[..., Any]


class MetricsError(Exception):
    """The metrics server cannot start; str() is one line for the user."""


class WebServer:
    def __init__(self, settings: Settings, process: Observed, metrics: Metrics) -> None:
        assert settings.metrics_port is not None  # (made only when METRICS_PORT is set)
        self.host, self.port = settings.metrics_host, settings.metrics_port
        self.max_downtime = settings.health_max_downtime
        self.process = process
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Bind and start answering; MetricsError when the address cannot be used."""
        self._server = start_server(self.host, self.port, self.app, spawn=10,
                                    what="metrics", error=MetricsError)
        log.info("Serving metrics on http://%s/metrics", shown(self.host, self.port))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            found = problems(self.process, self.max_downtime)
            body: dict[str, object] = {"status": "unhealthy" if found else "ok",
                                       "holder": self.process.holder}
            if found:
                body["problems"] = found
            else:
                body["in_flight"] = self.process.stats()["dispatch"]["held"]
            status = "503 Service Unavailable" if found else "200 OK"
            return _reply(start_response, status, json.dumps(body) + "\n", "application/json")
        if path in ("/metrics", "/"):
            return self._metrics_app(environ, start_response)
        return _reply(start_response, "404 Not Found", "not found: try /metrics or /healthz\n",
                      "text/plain")


def _reply(start_response: StartResponse, status: str, text: str,
           content_type: str) -> list[bytes]:
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]
