"""A TCP proxy in front of PostgreSQL that can lose one reply, for test_completions.py
(stop listening, for test_dashboard.py, and set up new connections slowly, for
test_connection_starvation.py).

Every connection is forwarded as it is, in threads of the pytest process. Once
`drop_reply_to(marker)` is called, the next statement whose text contains
`marker` reaches the server, and when the server's reply comes the proxy closes
that connection instead of passing it on: the statement ran (and, for a single
statement in autocommit, committed: PostgreSQL commits before it answers), and
the client only sees its connection break. Use it with sslmode=disable, so that
the statement's text can be read on the wire.

A slow set-up: with `connect_delay`, each new connection is forwarded that many
seconds after it came (each in a thread of its own, so connections opened
together arrive together), as scram over a distant link sets up slowly; with
`max_open` (changed at any time by `open_at_most`), a new connection also waits
while that many are open, and goes on when one closes or the cap is lifted.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress


class Proxy:
    def __init__(self, host: str, port: int, listen_port: int = 0,
                 connect_delay: float = 0.0, max_open: int | None = None) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self.listener.getsockname()[1]
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._closes = threading.Condition(self._lock)  # a connection closed, or the cap moved
        self.connect_delay = connect_delay
        self.max_open = max_open  # None: no cap
        self.dropped = 0  # replies dropped so far
        self.forwarding = 0  # connections whose server side is still open
        self.waiting = 0  # connections held back by the cap
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def open_at_most(self, connections: int | None) -> None:
        """Hold new connections while `connections` are open (None: let them all through)."""
        with self._closes:
            self.max_open = connections
            self._closes.notify_all()

    def close(self) -> None:
        """Stop listening (connections already forwarded go on)."""
        self._closed = True
        with suppress(OSError):  # wakes the accept() blocked in the thread: close() does not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.connect_delay or self.max_open is not None:
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()
            else:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        time.sleep(self.connect_delay)
        with self._closes:
            self.waiting += 1
            self._closes.wait_for(lambda: self.max_open is None or self.forwarding < self.max_open)
            self.waiting -= 1
            self.forwarding += 1
        try:
            server = socket.create_connection(self.target)
        except OSError:
            self._gone()
            _close(client)
            return
        state = {"drop": False}
        threading.Thread(target=self._upstream, args=(client, server, state),
                         daemon=True).start()
        threading.Thread(target=self._downstream, args=(server, client, state),
                         daemon=True).start()

    def _gone(self) -> None:
        with self._closes:
            self.forwarding -= 1
            self._closes.notify_all()

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        """Client to server, watching for the marked statement."""
        tail = b""
        with suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._marker is not None and self._marker in tail + data:
                        self._marker = None
                        state["drop"] = True
                tail = data[-256:]
                server.sendall(data)
        _close(client, server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        """Server to client; the reply to the marked statement is not passed on."""
        with suppress(OSError):
            while data := server.recv(65536):
                if state["drop"]:
                    self.dropped += 1
                    break
                client.sendall(data)
        _close(client, server)
        self._gone()


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            s.close()
