"""gevent's WSGI server bound to an address: the metrics server and the dashboard
start theirs the same way, and fail the same way (one line, the address shown)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.pywsgi import WSGIServer

from .logs import log


def shown(host: str, port: int) -> str:
    """`host:port` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_server(host: str, port: int, app: Callable[..., Any], *, spawn: int, what: str,
                 error: type[Exception]) -> WSGIServer:
    """Bind and start answering, at most `spawn` requests at once; `error` (one
    line: "cannot serve <what> on <address>: <reason>") when the address cannot
    be used."""
    server = WSGIServer((host, port), app, spawn=spawn, log=None, error_log=log)
    try:
        server.start()
    except OSError as exc:
        # args[1] is the bare message: gevent appends the address to strerror.
        reason = exc.args[1] if len(exc.args) == 2 else str(exc) or type(exc).__name__
        raise error(f"cannot serve {what} on {shown(host, port)}: {reason}") from None
    return server
