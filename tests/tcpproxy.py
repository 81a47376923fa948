"""A TCP proxy in front of PostgreSQL that can lose one reply, for test_completions.py
(and stop listening, for test_dashboard.py).

Every connection is forwarded as it is, in threads of the pytest process. Once
`drop_reply_to(marker)` is called, the next statement whose text contains
`marker` reaches the server, and when the server's reply comes the proxy closes
that connection instead of passing it on: the statement ran (and, for a single
statement in autocommit, committed: PostgreSQL commits before it answers), and
the client only sees its connection break. Use it with sslmode=disable, so that
the statement's text can be read on the wire.
"""
from __future__ import annotations

import socket
import threading
from contextlib import suppress


class Proxy:
    def __init__(self, host: str, port: int, listen_port: int = 0) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self.listener.getsockname()[1]
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self.dropped = 0  # replies dropped so far
        self.forwarding = 0  # connections whose server side is still open
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

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
            server = socket.create_connection(self.target)
            state = {"drop": False}
            with self._lock:
                self.forwarding += 1
            threading.Thread(target=self._upstream, args=(client, server, state),
                             daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state),
                             daemon=True).start()

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
        with self._lock:
            self.forwarding -= 1


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            s.close()
