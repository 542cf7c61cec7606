"""A real TLS server on loopback, in a thread, for handshake tests."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.certs import CA


@contextmanager
def tls_server(work: Path, root: CA, name: str = "localhost") -> Iterator[int]:
    """Serve a chain root → intermediate → server on 127.0.0.1; yield the port.

    The server sends its leaf and intermediate, not the root, like an IoT Edge gateway.
    """
    work.mkdir(parents=True, exist_ok=True)
    server = root.intermediate("Edge Gateway Intermediate").issue_server(name, [name, "127.0.0.1"])
    cert_path, key_path = server.write(work / "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_path), str(key_path))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello\n")
            except (ssl.SSLError, OSError):
                conn.close()  # the failing-client cases end here

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
