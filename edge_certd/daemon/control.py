"""The control socket: how the CLI asks the running daemon to add, remove or sync, so that
the daemon is the only writer and the only voice in the journal (aziot-certd's shape).

systemd's edge-certd.socket creates it (group edge-certd, mode 0660) and hands it over;
without systemd the daemon binds it itself. Each connection carries one request: a
length-prefixed JSON object, and for `add` the files as open descriptors (SCM_RIGHTS),
opened by the client with its own rights: the daemon never opens a path a client names.
The peer's credentials (SO_PEERCRED) decide what it may ask.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A request is a small JSON object; files travel as descriptors, not in it.
MAX_REQUEST = 64 * 1024
MAX_FILES = 64
# A client has this long to send its request; the loop must not wait on a slow one.
REQUEST_TIMEOUT = 2.0

# What members of the trusted group may ask; everything else needs root.
GROUP_OPS = frozenset({"add", "sync"})
ROOT_OPS = frozenset({"add", "sync", "remove"})


class RequestError(Exception):
    """A request that is refused; `kind` is what the CLI maps to an exit code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, kw_only=True)
class Request:
    op: str
    args: dict[str, Any]
    files: list[tuple[str, bytes]]  # (the name the client gave, the bytes read from its fd)


Handler = Callable[[Peer, Request], dict[str, Any]]


class ControlServer:
    def __init__(self, sock: socket.socket, group: str, max_file_bytes: int) -> None:
        self.sock = sock
        self.group = group
        self.max_file_bytes = max_file_bytes
        self.sock.setblocking(False)

    @classmethod
    def open(cls, path: str, group: str, max_file_bytes: int) -> ControlServer:
        """The socket systemd passed (LISTEN_FDS), else one bound at `path`.

        Raises:
            OSError: it cannot be bound.
        """
        from systemd import daemon as sd  # type: ignore[attr-defined]

        fds = sd.listen_fds()
        if fds:
            return cls(socket.socket(fileno=fds[0]), group, max_file_bytes)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(path)
        try:
            gid = grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        except (KeyError, OSError):
            os.chmod(path, 0o600)  # no such group here: root alone may ask
        sock.listen(16)
        return cls(sock, group, max_file_bytes)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self, handler: Handler) -> None:
        """Accept one waiting connection, answer its request, close it. Never raises for
        what a client sends."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                peer = _peer(conn)
                request = self._read(conn)
                self._authorize(peer, request.op)
                reply = handler(peer, request)
            except RequestError as exc:
                reply = {"error": {"kind": exc.kind, "message": exc.message}}
            except (OSError, ValueError) as exc:
                reply = {"error": {"kind": "usage", "message": f"bad request ({type(exc).__name__})"}}
            with contextlib.suppress(OSError):
                conn.sendall(_frame(reply))

    def close(self) -> None:
        self.sock.close()

    def _read(self, conn: socket.socket) -> Request:
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST + 4, MAX_FILES)
        try:
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                if len(data) >= 4 and struct.unpack(">I", data[:4])[0] > MAX_REQUEST:
                    raise RequestError("usage", "the request is too large")
                more = conn.recv(MAX_REQUEST)
                if not more:
                    raise RequestError("usage", "the request was cut short")
                data += more
            doc = json.loads(data[4 : 4 + struct.unpack(">I", data[:4])[0]])
            if not isinstance(doc, dict) or not isinstance(doc.get("op"), str):
                raise RequestError("usage", "a request needs an op")
            names = doc.get("names", [])
            if not isinstance(names, list) or len(names) != len(fds):
                raise RequestError("usage", "every file needs a name")
            files = [(str(name), self._read_fd(fd, str(name))) for name, fd in zip(names, fds, strict=True)]
            args = doc.get("args", {})
            return Request(op=doc["op"], args=args if isinstance(args, dict) else {}, files=files)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _read_fd(self, fd: int, name: str) -> bytes:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestError("usage", f"{name}: not a regular file")
        if info.st_size > self.max_file_bytes:
            raise RequestError(
                "usage", f"{name}: larger than {self.max_file_bytes} bytes (policy.max_file_bytes)"
            )
        chunks, left = [], self.max_file_bytes + 1
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 16), self.max_file_bytes + 1 - left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise RequestError(
                "usage", f"{name}: larger than {self.max_file_bytes} bytes (policy.max_file_bytes)"
            )
        return b"".join(chunks)

    def _authorize(self, peer: Peer, op: str) -> None:
        if op not in ROOT_OPS:
            raise RequestError("usage", f"unknown request {op!r}")
        if peer.uid == 0:
            return
        if op not in GROUP_OPS:
            raise RequestError("denied", f"`edge-certd {op}` needs root (sudo edge-certd {op} …)")
        if not _in_group(peer, self.group):
            raise RequestError(
                "denied",
                f"only root and members of the group {self.group} may ask edge-certd to {op} "
                f"(an administrator can run: sudo adduser USER {self.group})",
            )


def _peer(conn: socket.socket) -> Peer:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid=pid, uid=uid, gid=gid)


def _in_group(peer: Peer, group: str) -> bool:
    """Membership as /etc/group says (ProtectProc hides a client's /proc entry)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    if peer.gid == gid:
        return True
    try:
        user = pwd.getpwuid(peer.uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def _frame(doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc, ensure_ascii=False).encode()
    return struct.pack(">I", len(body)) + body
