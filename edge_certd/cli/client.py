"""The CLI's side of the control socket (see daemon/control.py); frames are core/wire's."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from edge_certd.core import wire
from edge_certd.core.errors import UsageError
from edge_certd.core.text import printable
from edge_certd.store.fsutil import ReadError
from edge_certd.store.sources import open_source

# config.control_socket's default, for `reload` when the file cannot be read.
DEFAULT_SOCKET = "/run/edge-certd/control"
# The daemon answers when the work is done: an update with Java hooks can take minutes.
REPLY_TIMEOUT = 900.0
MAX_REPLY = 16 * 1024 * 1024
# A busy daemon (its queue of connections full, or its share for group members taken) is
# asked again after each of these pauses, then the CLI says so and gives up.
RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0)


class NoDaemon(Exception):
    """Nothing listens on the control socket: the daemon is not running."""


class _Busy(Exception):
    """The daemon did not take the request; asking again is safe."""


def ask(path: str, op: str, args: dict[str, Any], files: Sequence[str] = ()) -> dict[str, Any]:
    """Send one request; return the daemon's reply.

    The files are opened here, with the caller's own rights, and passed as descriptors;
    they are opened before connecting, since the daemon gives a request a deadline.

    Raises:
        NoDaemon: nobody listens at `path`.
        UsageError: a file cannot be opened, the socket refuses this user, the daemon stays
            busy, or it answers with something that is not an answer.
    """
    fds = [_open(name) for name in files]
    try:
        message = wire.frame(wire.encode({"op": op, "args": args, "names": list(files)}))
        for attempt, pause in enumerate((*RETRY_PAUSES, None), start=1):
            try:
                return _exchange(path, message, fds)
            except _Busy as busy:
                if pause is None:
                    raise UsageError(
                        f"the edge-certd daemon is busy ({busy}); asked {attempt} times in "
                        f"{sum(RETRY_PAUSES):.0f} s; try again in a minute, and see "
                        "journalctl -u edge-certd if it stays busy"
                    ) from None
                print(
                    f"edge-certd: the daemon is busy ({busy}); asking again in {pause:g} s", file=sys.stderr
                )
                time.sleep(pause)
        raise AssertionError("unreachable")
    finally:
        for fd in fds:
            os.close(fd)


def _exchange(path: str, message: bytes, fds: Sequence[int]) -> dict[str, Any]:
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
        except (BlockingIOError, InterruptedError, TimeoutError):
            # AF_UNIX answers EAGAIN at once when the listen backlog is full.
            raise _Busy("its queue of connections is full") from None
        try:
            socket.send_fds(sock, [message], list(fds))
        except (ConnectionResetError, BrokenPipeError):
            raise _Busy("it closed the connection before reading the request") from None
        reply = _read_reply(sock)
    finally:
        sock.close()
    error = reply.get("error")
    if isinstance(error, dict) and error.get("kind") == "busy":
        raise _Busy("it is serving other requests")
    return reply


def _open(name: str) -> int:
    # As sync reads sources: no link out of the file's directory, no FIFO or device (a
    # technician racing one in under the name must not hang the CLI or the daemon).
    try:
        return open_source(name)
    except ReadError as exc:
        raise UsageError(f"{printable(name, limit=4096)}: {exc.reason}") from None


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    """The daemon's one answer. It may have done the work already, so nothing here asks again."""
    reader = wire.FrameReader(MAX_REPLY)
    try:
        while (payload := reader.pop()) is None:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise UsageError(
                    "the daemon closed the connection without an answer; see journalctl -u edge-certd"
                )
            reader.feed(chunk)
        return wire.decode_object(payload)
    except TimeoutError:
        raise UsageError(
            f"no answer from the daemon within {REPLY_TIMEOUT:.0f} s; see journalctl -u edge-certd"
        ) from None
    except OSError as exc:  # ECONNRESET: the daemon went away mid-request
        raise UsageError(
            f"the connection to the daemon broke before its answer ({exc.strerror or exc}); "
            "see journalctl -u edge-certd"
        ) from None
    except wire.WireError as exc:
        raise UsageError(f"the daemon's answer is not one edge-certd understands: {exc}") from None
