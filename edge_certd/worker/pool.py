"""The daemon's and the CLI's side of the judge (`worker.server`).

Under systemd the judge is `edge-certd-judge.service`, reached through its socket
(EDGE_CERTD_JUDGE_SOCKET, /run/edge-certd/judge by default); elsewhere the same server runs
as a child process over a socketpair, started on the first request (or on `warm_up`, which
the daemon calls on the first event of a burst) and let go after IDLE_SECONDS without one
(`release_if_idle`, from the daemon's loop), as the systemd unit idles out by itself. Each
request carries its limits, so a reload reaches the judge at once.

While it waits the client calls `poll` a few times a second, so the daemon keeps pinging
systemd's watchdog and can stop on SIGTERM in the middle of a sync. Every answer is
untrusted until `core.codec` has decoded it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from edge_certd.core.codec import context_to_json, verdict_from_json
from edge_certd.core.judgement import JudgeContext, JudgeRequest
from edge_certd.core.model import FileVerdict, Reason, Rejection
from edge_certd.core.wire import FrameReader, WireError, decode_object, encode, frame

SOCKET_ENV = "EDGE_CERTD_JUDGE_SOCKET"
DEFAULT_SOCKET = "/run/edge-certd/judge"
# A verdict for a 1 MB file is a few KB; anything far larger is a misbehaving judge.
MAX_FRAME = 16 * 1024 * 1024
_POLL_INTERVAL = 0.25
# The judge enforces the wall deadline itself; this much more is for a judge that does not
# answer at all (stopped, or still importing Python and cryptography on a loaded machine).
_CLIENT_SLACK = 10.0
# An idle child judge is let go after this long (the daemon's loop asks, through
# `release_if_idle`): between bursts the service is one process (issue 24). The systemd unit
# idles out after the same time by itself (worker.server.IDLE_SECONDS).
IDLE_SECONDS = 30.0
# A connection to the judge's socket opened ahead of a request (`warm_up`) is dropped after
# this long unused: the judge ends a connection that sends nothing for 10 s.
WARM_SECONDS = 5.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SERVER = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from edge_certd.worker.server import main; sys.exit(main())"
)


class Outcome(StrEnum):
    OK = "ok"  # the verdict stands
    LIMIT = "limit"  # the file itself used its whole CPU or memory budget: refused
    UNAVAILABLE = "unavailable"  # not judged, and not the file's fault: hold and retry


@dataclass(frozen=True, kw_only=True)
class Judgement:
    """One file's verdict and how it was reached. For UNAVAILABLE the verdict refuses the
    file for now (what `add` and `inspect` show); a sync holds such a file instead."""

    outcome: Outcome
    verdict: FileVerdict
    cpu_seconds: float = 0.0


@dataclass(kw_only=True)
class _Exchange:
    """One request on its way: the connection it went out on, and the answer so far."""

    conn: socket.socket
    reader: FrameReader
    deadline: float  # monotonic


@dataclass(kw_only=True)
class _Flight:
    """A batch `submit` sent (or failed to send), until `collect`."""

    requests: Sequence[JudgeRequest]
    context: JudgeContext
    exchange: _Exchange | None = None
    failure: _Failed | None = None


class _Failed(Exception):
    def __init__(self, outcome: Outcome, why: str, *, unreachable: bool = False) -> None:
        super().__init__(why)
        self.outcome, self.why, self.unreachable = outcome, why, unreachable


class JudgeWorker:
    """Judges files in the judge. `judge` never raises except what `poll` raises.

    Args:
        socket_path: the judge's socket; "" runs the judge as a child process. By default
            EDGE_CERTD_JUDGE_SOCKET, else DEFAULT_SOCKET when it exists and this is root.
        poll: called a few times a second while waiting; may raise to give up.
    """

    def __init__(self, *, socket_path: str | None = None, poll: Callable[[], None] | None = None) -> None:
        if socket_path is None:
            socket_path = os.environ.get(SOCKET_ENV)
            # The installed judge's socket is root's alone (0600): anyone else, a technician's
            # scratch tree in the autopkgtest among them, judges in a child of their own.
            if socket_path is None and os.geteuid() == 0 and os.path.exists(DEFAULT_SOCKET):
                socket_path = DEFAULT_SOCKET
        self.socket_path = socket_path or None
        self.poll = poll
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._used_at = 0.0  # monotonic: the connection's last request, or its opening
        self._flight: _Flight | None = None  # the batch `submit` sent, until `collect`
        self.spawned = 0  # for tests and benchmarks: how many judge processes were started

    @property
    def server_pid(self) -> int | None:
        """The judge's pid when it runs as this process's child."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def judge(self, requests: Sequence[JudgeRequest], context: JudgeContext) -> list[Judgement]:
        """Judge files, in one round trip when all goes well.

        A batch that fails is judged again one file at a time, so that only a file that
        itself exceeds a limit is refused; a batch the judge could not finish is blamed on
        no file. When the judge cannot be reached, the rest are UNAVAILABLE at once.
        """
        self.submit(requests, context)
        return self.collect()

    def submit(self, requests: Sequence[JudgeRequest], context: JudgeContext) -> None:
        """Send a batch and return while the judge works on it, so that the caller can read
        the next batch meanwhile; `collect` gives its judgements. One batch at a time: a batch
        never collected is abandoned (the connection dropped) by the next call."""
        self._abandon()
        flight = _Flight(requests=requests, context=context)
        if len(requests) > 1:
            try:
                flight.exchange = self._send(requests, context)
            except _Failed as exc:
                flight.failure = exc
        self._flight = flight

    def collect(self, then: Callable[[], None] | None = None) -> list[Judgement]:
        """The judgements of the batch `submit` sent, in its order (see `judge`).

        `then` runs as soon as the judge is free, before its answer is decoded: a caller
        that submits its next batch there keeps the judge working while this process decodes.
        """
        flight, self._flight = self._flight, None
        if flight is None:
            if then is not None:
                then()
            return []
        requests, context = flight.requests, flight.context
        payload: bytes | None = None
        if flight.exchange is not None:
            try:
                payload = self._receive(flight.exchange)
            except _Failed as exc:
                flight.failure = exc
        if payload is not None:
            if then is not None:
                then()
                then = None
            try:
                return self._decode(payload, requests)
            except _Failed as exc:  # the connection is dropped: a batch sent by `then` fails too
                flight.failure = exc
        results = self._one_by_one(requests, context, flight.failure)
        if then is not None:
            then()
        return results

    def _one_by_one(
        self, requests: Sequence[JudgeRequest], context: JudgeContext, failure: _Failed | None
    ) -> list[Judgement]:
        """A failed batch judged again a file at a time (see `judge`)."""
        if failure is not None and failure.unreachable:
            return [_unavailable(r, failure.why) for r in requests]
        results: list[Judgement] = []
        unreachable: str | None = None
        for request in requests:
            if unreachable is not None:
                results.append(_unavailable(request, unreachable))
                continue
            try:
                results.extend(self._ask([request], context))
            except _Failed as exc:
                if exc.outcome is Outcome.LIMIT:
                    results.append(_over_limit(request, exc.why))
                else:
                    results.append(_unavailable(request, exc.why))
                    if exc.unreachable:
                        unreachable = exc.why
        return results

    def warm_up(self) -> None:
        """Start the judge now, on the first event of a burst, so that its start-up (Python and
        cryptography loading, or socket activation of the judge's unit) runs while the loop
        waits and scans, not after. Under systemd this opens the connection that the next
        request uses; the unit starts on it."""
        with contextlib.suppress(_Failed):
            self._connect()
        self._used_at = time.monotonic()

    def idle_deadline(self) -> float | None:
        """When `release_if_idle` lets the judge go (monotonic), or None with none held."""
        if self._conn is None:
            return None
        return self._used_at + (WARM_SECONDS if self.socket_path is not None else IDLE_SECONDS)

    def release_if_idle(self, now: float) -> None:
        """Let an idle judge go: the child ends, and a warmed connection closes. The next
        request (or `warm_up`) starts it again."""
        deadline = self.idle_deadline()
        if deadline is not None and now >= deadline:
            self._drop_connection()

    def close(self) -> None:
        """End the child judge at once: it holds no state, and a stuck one must not hold up
        a daemon that is stopping."""
        self._flight = None
        self._drop_connection()

    # -- one round trip ----------------------------------------------------------------

    def _ask(self, requests: Sequence[JudgeRequest], context: JudgeContext) -> list[Judgement]:
        return self._decode(self._receive(self._send(requests, context)), requests)

    def _send(self, requests: Sequence[JudgeRequest], context: JudgeContext) -> _Exchange:
        header = {
            "context": context_to_json(context),
            "files": [{"source": r.source, "kind": str(r.kind)} for r in requests],
        }
        message = frame(encode(header), *(r.data for r in requests))
        conn = self._connect()
        exchange = _Exchange(
            conn=conn,
            reader=FrameReader(MAX_FRAME),
            deadline=time.monotonic() + context.limits.wall_seconds + _CLIENT_SLACK,
        )
        with self._ending_on_failure(conn):
            out = memoryview(message)
            while out:
                readable, writable = self._wait(exchange, writing=True)
                if readable:
                    break  # the judge answered before reading it all (a refusal): see _receive
                if not writable:
                    continue
                try:
                    out = out[conn.send(out) :]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _Failed(Outcome.UNAVAILABLE, f"the judge failed ({type(exc).__name__})") from None
        return exchange

    def _receive(self, exchange: _Exchange) -> bytes:
        """The judge's answer, undecoded; _Failed when it is not `ok`."""
        with self._ending_on_failure(exchange.conn, done=True):
            answer: dict[str, object] | None = None
            payload: bytes | None = None
            while payload is None:
                if answer is None and exchange.reader.pending:
                    answer = decode_object(exchange.reader.pop() or b"")
                    if answer.get("outcome") != Outcome.OK:
                        break
                if answer is not None and exchange.reader.pending:
                    payload = exchange.reader.pop()
                    break
                if self._wait(exchange, writing=False)[0]:
                    try:
                        data = exchange.conn.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise _Failed(
                            Outcome.UNAVAILABLE, f"the judge failed ({type(exc).__name__})"
                        ) from None
                    if not data:
                        raise _Failed(Outcome.UNAVAILABLE, "the judge closed the connection")
                    try:
                        exchange.reader.feed(data)
                    except WireError as exc:
                        raise _Failed(
                            Outcome.UNAVAILABLE, f"the judge failed ({type(exc).__name__})"
                        ) from None
        assert answer is not None
        outcome, why = answer.get("outcome"), answer.get("why")
        if outcome == Outcome.LIMIT and isinstance(why, str):
            raise _Failed(Outcome.LIMIT, why[:200])
        if outcome != Outcome.OK or payload is None:
            text = why[:200] if isinstance(why, str) and why else "the judge gave no verdict"
            raise _Failed(Outcome.UNAVAILABLE, text)
        return payload

    def _decode(self, payload: bytes, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        try:
            doc = decode_object(payload)
            verdicts, cpus = doc["verdicts"], doc["cpu"]
            if not isinstance(verdicts, list) or not isinstance(cpus, list):
                raise ValueError("not lists")
            return [
                Judgement(
                    outcome=Outcome.OK,
                    verdict=verdict_from_json(item, request.source),
                    cpu_seconds=float(cpu),
                )
                for item, cpu, request in zip(verdicts, cpus, requests, strict=True)
            ]
        except (KeyError, TypeError, ValueError):
            self._drop_connection()
            raise _Failed(Outcome.UNAVAILABLE, "the judge's answer was malformed") from None

    def _wait(self, exchange: _Exchange, *, writing: bool) -> tuple[bool, bool]:
        """Wait a quarter second at most until the connection can be read (or, `writing`,
        written): (readable, writable). `poll` runs first: it may raise to cancel the sync."""
        if self.poll is not None:
            self.poll()
        remaining = exchange.deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed(Outcome.UNAVAILABLE, "the judge did not answer in time")
        conn = exchange.conn
        if conn.fileno() < 0:
            raise _Failed(Outcome.UNAVAILABLE, "the connection to the judge was closed")
        readable, writable, _ = select.select(
            [conn], [conn] if writing else [], [], min(_POLL_INTERVAL, remaining)
        )
        return bool(readable), bool(writable)

    @contextlib.contextmanager
    def _ending_on_failure(self, conn: socket.socket, *, done: bool = False) -> Iterator[None]:
        """A failed or cancelled exchange on `conn` ends it (the child judge with it), so no
        half-read answer is taken for the next one's. `done`: the exchange is over. A
        connection already replaced (a file-by-file retry opened another) is left alone."""
        try:
            yield
        except BaseException:
            self._drop_connection(conn)
            raise
        finally:
            self._used_at = time.monotonic()
            if done and self.socket_path is not None:
                self._drop_connection(conn)  # one connection per request: the judge may idle out

    def _abandon(self) -> None:
        """Give up a batch sent and never collected: its answer must not be read as the next's."""
        flight, self._flight = self._flight, None
        if flight is not None and flight.exchange is not None:
            self._drop_connection(flight.exchange.conn)

    # -- the connection ----------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._conn is not None and self._proc is not None and self._proc.poll() is not None:
            self._drop_connection()  # the child ended (killed from outside): start another
        if self._conn is not None:
            return self._conn
        if self.socket_path is not None:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                conn.connect(self.socket_path)
            except OSError as exc:
                conn.close()
                raise _Failed(
                    Outcome.UNAVAILABLE,
                    f"the judge at {self.socket_path} cannot be reached ({exc.strerror})",
                    unreachable=True,
                ) from None
            conn.setblocking(False)
            self._conn = conn
            return conn
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-s", "-E", "-c", _SERVER, _PACKAGE_ROOT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            )
        except OSError as exc:
            ours.close()
            raise _Failed(
                Outcome.UNAVAILABLE, f"the judge could not be started ({exc.strerror})", unreachable=True
            ) from None
        finally:
            theirs.close()
        self.spawned += 1
        ours.setblocking(False)
        self._conn = ours
        return ours

    def _drop_connection(self, only: socket.socket | None = None) -> None:
        """End the connection (and a child judge); with `only`, when it is still that one."""
        if only is not None and only is not self._conn:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # stopped and unkillable for now; the kernel reaps it with us


def _unavailable(request: JudgeRequest, why: str) -> Judgement:
    message = f"edge-certd could not judge this file now ({why}); it is judged again later"
    return Judgement(outcome=Outcome.UNAVAILABLE, verdict=_refused(request, Reason.JUDGE_FAILED, message))


def _over_limit(request: JudgeRequest, why: str) -> Judgement:
    message = (
        f"{why}, so it is not trusted; a root CA file is judged in milliseconds, so this file "
        "is malformed or built to exhaust the device"
    )
    return Judgement(outcome=Outcome.LIMIT, verdict=_refused(request, Reason.JUDGE_LIMIT, message))


def _refused(request: JudgeRequest, code: Reason, message: str) -> FileVerdict:
    return FileVerdict(
        source=request.source,
        format="unknown",
        content_sha256=hashlib.sha256(request.data).hexdigest(),
        rejected=(Rejection(source=request.source, code=code, message=message),),
    )
