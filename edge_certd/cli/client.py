"""The CLI's side of the control socket (see daemon/control.py)."""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from edge_certd.core.errors import UsageError
from edge_certd.core.text import printable
from edge_certd.store.fsutil import ReadError
from edge_certd.store.sources import open_source

# The daemon answers when the work is done: an update with Java hooks can take minutes.
REPLY_TIMEOUT = 900.0
MAX_REPLY = 16 * 1024 * 1024


class NoDaemon(Exception):
    """Nothing listens on the control socket: the daemon is not running."""


def ask(path: str, op: str, args: dict[str, Any], files: Sequence[str] = ()) -> dict[str, Any]:
    """Send one request; return the daemon's reply.

    The files are opened here, with the caller's own rights, and passed as descriptors.

    Raises:
        NoDaemon: nobody listens at `path`.
        UsageError: a file cannot be opened, or the socket refuses this user.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(path) from None
        except PermissionError:
            raise UsageError(
                f"cannot reach the edge-certd daemon at {path}: permission denied; only root and "
                "members of the group edge-certd may (sudo adduser $USER edge-certd, then log in again)"
            ) from None
        fds = [_open(name) for name in files]
        try:
            body = json.dumps({"op": op, "args": args, "names": list(files)}).encode()
            frame = struct.pack(">I", len(body)) + body
            socket.send_fds(sock, [frame], fds)
        finally:
            for fd in fds:
                os.close(fd)
        return _read_reply(sock)
    finally:
        sock.close()


def _open(name: str) -> int:
    # As sync reads sources: no link out of the file's directory, no FIFO or device (a
    # technician racing one in under the name must not hang the CLI or the daemon).
    try:
        return open_source(name)
    except ReadError as exc:
        raise UsageError(f"{printable(name, limit=4096)}: {exc.reason}") from None


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        if len(data) >= 4 and struct.unpack(">I", data[:4])[0] > MAX_REPLY:
            raise UsageError("the daemon's answer is too large")
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise UsageError(
                "the daemon closed the connection without an answer; see journalctl -u edge-certd"
            )
        data += chunk
    doc = json.loads(data[4 : 4 + struct.unpack(">I", data[:4])[0]])
    if not isinstance(doc, dict):
        raise UsageError("the daemon's answer is not an object")
    return doc
