"""The control socket: how the CLI asks the running daemon to add, remove, sync or reload,
so that the daemon is the only writer and the only voice in the journal (aziot-certd's shape).

systemd's edge-certd.socket creates it (group edge-certd, mode 0660) and hands it over;
without systemd the daemon binds it itself. Each connection carries one request: one
core/wire message (a JSON object), and for `add` the files as open descriptors
(SCM_RIGHTS), opened by the client with its own rights: the daemon never opens a path a
client names. The peer's credentials (SO_PEERCRED, read at accept) decide what it may ask.

Clients are served off the daemon's loop. A small thread accepts every connection, reads
its request under one deadline for the whole request, refuses what is malformed or not
allowed, and only then queues a `Job`; the loop does the work (it stays the only writer)
and calls `Job.answer`, and the thread writes that answer. A client that is slow, silent or
hostile costs at most one connection slot until its deadline, never the loop's time.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_certd.core import wire
from edge_certd.core.text import printable
from edge_certd.sync import journal as events

# A request is a small JSON object; files travel as descriptors, not in it.
MAX_REQUEST = 64 * 1024
MAX_FILES = 64
MAX_NAME = 4096  # PATH_MAX: no name a client gives is longer
# The whole request, from accept to its last byte: a client that trickles a byte at a time
# is cut off here, whatever each recv() does. The CLI opens its files before it connects.
REQUEST_DEADLINE = 10.0
# A client has this long to take its answer once it is ready.
ANSWER_DEADLINE = 10.0
# Connections in flight (being read, queued for the loop, or being answered). Group members
# share a few; root is always admitted, in the place of the oldest idle connection if need be.
MAX_GROUP_CONNECTIONS = 8
MAX_CONNECTIONS = 64
# File bytes held for queued `add` requests (each file is at most policy.max_file_bytes).
MAX_QUEUED_FILE_BYTES = 64 * 1024 * 1024
# A client that sends bad requests in a loop must not flood the journal.
LOG_BURST = 10
LOG_WINDOW = 60.0

# What members of the trusted group may ask; everything else needs root.
GROUP_OPS = frozenset({"add", "sync"})
ROOT_OPS = frozenset({"add", "sync", "remove", "reload"})


class RequestError(Exception):
    """A request that is refused; `kind` is what the CLI maps to an exit code
    ("usage", "denied", "notfound", "apply", "config", "busy", "internal")."""

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


def error_reply(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message}}


@dataclass(eq=False, kw_only=True)
class _Conn:
    sock: socket.socket
    peer: Peer
    deadline: float
    reader: wire.FrameReader = field(default_factory=lambda: wire.FrameReader(MAX_REQUEST))
    fds: list[int] = field(default_factory=list)
    state: str = "reading"  # then "queued" (the loop has it), then "answering"
    out: bytes = b""
    held_bytes: int = 0

    @property
    def root(self) -> bool:
        return self.peer.uid == 0

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.sock.close()


@dataclass(frozen=True, kw_only=True, eq=False)
class Job:
    """One authorised request, for the loop. Answer it exactly once."""

    peer: Peer
    request: Request
    _conn: _Conn
    _server: ControlServer

    def answer(self, reply: dict[str, Any]) -> None:
        self._server._answer(self._conn, reply)


class ControlServer:
    """The listening socket and the thread that serves it; `wake` tells the loop a job waits."""

    def __init__(
        self, sock: socket.socket, group: str, max_file_bytes: int, wake: Callable[[], None]
    ) -> None:
        self.sock = sock
        self.group = group
        self.max_file_bytes = max_file_bytes
        self.sock.setblocking(False)
        self._wake_loop = wake
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._outbox: list[tuple[_Conn, bytes]] = []
        self._conns: dict[int, _Conn] = {}
        self._stopping = False
        self._logged: list[float] = []
        self._unlogged = 0
        # Opened now, before the daemon's first inotify watch (see daemon/loop.py's run).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="edge-certd-control", daemon=True)

    @classmethod
    def open(cls, path: str, group: str, max_file_bytes: int, wake: Callable[[], None]) -> ControlServer:
        """The socket systemd passed (LISTEN_FDS), else one bound at `path`.

        Raises:
            OSError: it cannot be bound.
        """
        from systemd import daemon as sd  # type: ignore[attr-defined]

        fds = sd.listen_fds()
        if fds:
            return cls(socket.socket(fileno=fds[0]), group, max_file_bytes, wake)
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
        return cls(sock, group, max_file_bytes, wake)

    # -- the loop's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def take(self) -> list[Job]:
        """Every queued job, root's first: a group member's queue never delays root."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        return sorted(jobs, key=lambda job: job.peer.uid != 0)

    def close(self) -> None:
        """Stop the thread; whoever still waits hears that the daemon is stopping."""
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if not self._thread.is_alive():
            for conn in list(self._conns.values()):
                if conn.state != "answering":  # never in the middle of another answer
                    with contextlib.suppress(OSError):
                        conn.sock.send(_stopping_frame(), socket.MSG_DONTWAIT)
                conn.close()
            self._conns.clear()
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
            for fd in (wake_r, wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.sock.close()

    def _answer(self, conn: _Conn, reply: dict[str, Any]) -> None:
        data = wire.frame(wire.encode(reply))
        with self._lock:
            self._outbox.append((conn, data))
        self._poke()

    def _poke(self) -> None:
        if self._wake_w < 0:
            return  # closed: a late answer has nobody to go to
        with contextlib.suppress(OSError):  # full: the thread is due to wake anyway
            os.write(self._wake_w, b"x")

    # -- the thread --------------------------------------------------------------------

    def _serve(self) -> None:
        poller = select.poll()  # holds no descriptor of its own
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            with self._lock:
                if self._stopping:
                    return
            timeout = self._next_deadline() - time.monotonic()
            try:
                ready = poller.poll(max(0, int(timeout * 1000) + 1))
            except InterruptedError:
                continue
            try:
                for fd, _ in ready:
                    if fd == self.sock.fileno():
                        self._accept_some(poller)
                    elif fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        self._start_answers(poller)
                    elif (conn := self._conns.get(fd)) is not None:
                        self._step(poller, conn)
                self._expire(poller)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave the socket unserved
                self._log(f"control socket: internal error: {exc!r}")
                time.sleep(0.1)  # and not spin on it

    def _next_deadline(self) -> float:
        active = [c.deadline for c in self._conns.values() if c.state != "queued"]
        return min(active, default=time.monotonic() + 60.0)

    def _accept_some(self, poller: select.poll) -> None:
        for _ in range(MAX_CONNECTIONS):  # then let the others have their turn
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: say so once, try again later
                self._log(f"control socket: cannot accept a connection ({exc.strerror or exc})")
                return
            sock.setblocking(False)
            try:
                peer = _peer(sock)
            except OSError:
                sock.close()
                continue
            conn = _Conn(sock=sock, peer=peer, deadline=time.monotonic() + REQUEST_DEADLINE)
            if not self._make_room(poller, conn):
                with contextlib.suppress(OSError):
                    sock.send(_busy_frame(), socket.MSG_DONTWAIT)
                sock.close()
                continue
            self._conns[sock.fileno()] = conn
            poller.register(sock.fileno(), select.POLLIN)

    def _make_room(self, poller: select.poll, new: _Conn) -> bool:
        """Whether `new` may be served: a group member within the group's share (else the
        oldest member still sending gives way), root always (in the place of the oldest
        idle connection when all are taken)."""
        conns = list(self._conns.values())  # in the order they came
        members = [c for c in conns if not c.root]
        if not new.root and len(members) < MAX_GROUP_CONNECTIONS and len(conns) < MAX_CONNECTIONS:
            return True
        if new.root and len(conns) < MAX_CONNECTIONS:
            return True
        idle = [c for c in members if c.state == "reading"]
        if new.root:
            idle += [c for c in conns if c.root and c.state == "reading"]
        if not idle:
            return new.root  # only root's own work fills the slots
        self._drop(poller, idle[0])
        return True

    def _step(self, poller: select.poll, conn: _Conn) -> None:
        """One read or write on one connection; whatever goes wrong ends that one only."""
        try:
            if conn.state == "reading":
                self._read_some(poller, conn)
            elif conn.state == "answering":
                self._write_some(poller, conn)
        except _Refused as exc:
            self._refuse(poller, conn, exc.error)
        except wire.WireError as exc:
            self._refuse(poller, conn, RequestError("usage", f"bad request: {exc}"), log=True)
        except OSError:
            self._drop(poller, conn)  # the client went away (reset, broken pipe)
        except Exception as exc:  # noqa: BLE001 - one request must never end the daemon
            self._log(
                f"control socket: internal error while reading a request from {_who(conn.peer)}: {exc!r}"
            )
            self._refuse(poller, conn, RequestError("internal", f"bad request ({type(exc).__name__})"))

    def _read_some(self, poller: select.poll, conn: _Conn) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(conn.sock, 1 << 16, MAX_FILES, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        conn.fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(conn.fds) > MAX_FILES:
            raise _Refused(RequestError("usage", f"at most {MAX_FILES} files in one request"))
        if not data:  # the client gave up before its request was whole: nobody to answer
            self._drop(poller, conn)
            return
        conn.reader.feed(data)
        payload = conn.reader.pop()
        if payload is None:
            return
        if conn.reader.partial or conn.reader.pending:
            raise _Refused(RequestError("usage", "bad request: one request per connection"))
        request = self._request(conn, payload)
        self._authorize(conn.peer, request.op)
        held = sum(len(data) for _, data in request.files)
        with self._lock:
            queued = sum(j._conn.held_bytes for j in self._jobs)
            if held and queued + held > MAX_QUEUED_FILE_BYTES:
                raise _Refused(RequestError("busy", "edge-certd is busy with other files; ask again"))
            conn.state, conn.held_bytes = "queued", held
            self._jobs.append(Job(peer=conn.peer, request=request, _conn=conn, _server=self))
        poller.unregister(conn.sock.fileno())
        self._wake_loop()

    def _request(self, conn: _Conn, payload: bytes) -> Request:
        doc = wire.decode_object(payload)
        op, names, args = doc.get("op"), doc.get("names", []), doc.get("args", {})
        if not isinstance(op, str) or not isinstance(args, dict) or not isinstance(names, list):
            raise wire.WireError("a request is an object with an op, args and names")
        if op not in ROOT_OPS:
            raise _Refused(RequestError("usage", f"unknown request {printable(repr(op), limit=64)}"))
        if conn.fds and op != "add":
            raise _Refused(RequestError("usage", f"bad request: only add sends files, not {op}"))
        if len(names) != len(conn.fds) or not all(isinstance(n, str) and len(n) <= MAX_NAME for n in names):
            raise _Refused(
                RequestError("usage", "bad request: every file needs a name (a path, at most 4096)")
            )
        files = [(name, self._read_fd(fd, name)) for name, fd in zip(names, conn.fds, strict=True)]
        for fd in conn.fds:
            os.close(fd)
        conn.fds.clear()
        return Request(op=op, args=args, files=files)

    def _read_fd(self, fd: int, name: str) -> bytes:
        shown = printable(name, limit=256)
        too_large = RequestError(
            "usage", f"{shown}: larger than {self.max_file_bytes} bytes (policy.max_file_bytes)"
        )
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _Refused(RequestError("usage", f"{shown}: not a regular file"))
            if info.st_size > self.max_file_bytes:
                raise _Refused(too_large)
            chunks: list[bytes] = []
            got = 0
            while got <= self.max_file_bytes:
                chunk = os.pread(fd, min(self.max_file_bytes + 1 - got, 1 << 16), got)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                got += len(chunk)
        except OSError as exc:
            raise _Refused(RequestError("usage", f"{shown}: cannot be read ({exc.strerror})")) from None
        raise _Refused(too_large)

    def _authorize(self, peer: Peer, op: str) -> None:
        if peer.uid == 0:
            return
        if op not in GROUP_OPS:
            raise _Refused(RequestError("denied", f"`edge-certd {op}` needs root (sudo edge-certd {op} …)"))
        if not _in_group(peer, self.group):
            raise _Refused(
                RequestError(
                    "denied",
                    f"only root and members of the group {self.group} may ask edge-certd to {op} "
                    f"(an administrator can run: sudo adduser USER {self.group})",
                )
            )

    def _refuse(self, poller: select.poll, conn: _Conn, error: RequestError, log: bool = False) -> None:
        if log:
            self._log(f"control socket: refused a request from {_who(conn.peer)}: {error.message}")
        for fd in conn.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.fds.clear()
        conn.state, conn.out = "answering", wire.frame(wire.encode(error_reply(error.kind, error.message)))
        conn.deadline = time.monotonic() + ANSWER_DEADLINE
        with contextlib.suppress(KeyError):
            poller.unregister(conn.sock.fileno())
        poller.register(conn.sock.fileno(), select.POLLOUT)
        self._write_some(poller, conn)

    def _start_answers(self, poller: select.poll) -> None:
        with self._lock:
            outbox, self._outbox = self._outbox, []
        for conn, data in outbox:
            if self._conns.get(conn.sock.fileno()) is not conn:
                continue  # dropped meanwhile
            conn.state, conn.out, conn.held_bytes = "answering", data, 0
            conn.deadline = time.monotonic() + ANSWER_DEADLINE
            poller.register(conn.sock.fileno(), select.POLLOUT)
            try:
                self._write_some(poller, conn)
            except OSError:
                self._drop(poller, conn)

    def _write_some(self, poller: select.poll, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away before its answer: nothing more to do
            self._drop(poller, conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._drop(poller, conn)

    def _expire(self, poller: select.poll) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.state == "queued" or now < conn.deadline:
                continue
            if conn.state == "reading":
                error = RequestError("usage", f"bad request: not sent whole within {REQUEST_DEADLINE:.0f} s")
                self._refuse(poller, conn, error)
                if conn.state == "answering" and self._conns.get(conn.sock.fileno()) is conn:
                    conn.deadline = now + 1.0  # it has not read either: a short grace
            else:
                self._drop(poller, conn)

    def _drop(self, poller: select.poll, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0 and self._conns.get(fd) is conn:
            with contextlib.suppress(KeyError):
                poller.unregister(fd)
            del self._conns[fd]
        conn.close()

    def _log(self, message: str) -> None:
        """Once per event, at most LOG_BURST a minute; what is left out is counted."""
        now = time.monotonic()
        self._logged = [t for t in self._logged if now - t < LOG_WINDOW]
        if len(self._logged) >= LOG_BURST:
            self._unlogged += 1
            return
        self._logged.append(now)
        if self._unlogged:
            message += f" ({self._unlogged} more like it not logged)"
            self._unlogged = 0
        events.emit("control", printable(message, limit=1024), logging.WARNING, reason="bad_request")


class _Refused(Exception):
    def __init__(self, error: RequestError) -> None:
        super().__init__(error.message)
        self.error = error


def _busy_frame() -> bytes:
    return wire.frame(wire.encode(error_reply("busy", "edge-certd is busy with other requests; ask again")))


def _stopping_frame() -> bytes:
    return wire.frame(wire.encode(error_reply("apply", "edge-certd is stopping; ask again when it is back")))


def _who(peer: Peer) -> str:
    return "root" if peer.uid == 0 else f"uid {peer.uid} (pid {peer.pid})"


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
