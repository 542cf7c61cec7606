"""Real loopback servers for tests: a threaded TCP server and a Python ssl TLS handler."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["LoopbackServer", "free_port", "tls_handler"]


class LoopbackServer:
    """A TCP server in a thread; `handle` runs once per accepted connection."""

    def __init__(self, handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._handle = handle
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(5)
            self._held.append(conn)
            with contextlib.suppress(OSError, ssl.SSLError):
                self._handle(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


def tls_handler(
    cert: Path, key: Path, seen_sni: list[str | None] | None = None
) -> Callable[[socket.socket], None]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if seen_sni is not None:

        def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            seen_sni.append(name)

        context.sni_callback = record  # type: ignore[assignment]

    def handle(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True):
            pass

    return handle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
