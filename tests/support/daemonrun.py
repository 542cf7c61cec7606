"""The one harness for `edge-certd run`, for the tests and the benchmarks alike.

The daemon runs as a subprocess with NOTIFY_SOCKET bound to a real AF_UNIX datagram socket
that this module owns, so READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1 and STATUS= are
what systemd would see. A thread reads the socket all the time, as systemd does (the
kernel queues only net.unix.max_dgram_qlen datagrams; after that sd_notify blocks), and
keeps every datagram with the time it arrived.

Waiting is for events, never for a sleep or for one file a sync writes:

    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (tree.drop / "root.pem").write_bytes(pem)
        line = daemon.wait_synced(mark, status="1 CA trusted")

`wait_synced` returns at the end of a sync that ended after `mark`: the daemon recorded
it (daemon.json's `updated` changed, with the STATUS= line it carries), that line
reached the socket (STATUS= or READY=1's), and nobody holds the state lock. The daemon
sends STATUS= only when the line changes, so its record in daemon.json is what tells a
sync that left the line alone from no sync at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from support.tree import Tree

REPO = Path(__file__).resolve().parents[2]
# Variables that would make the daemon log to the journal, or ping a watchdog nobody reads.
_SYSTEMD_VARS = (
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
)
# The bound on every wait; a wait that runs out raises with the log. Generous, because it
# costs nothing when the event comes and CI runs the suite beside two CPU-bound processes.
TIMEOUT = 120.0
POLL = 0.02  # seconds between looks at daemon.json and the lock while waiting


@dataclass(frozen=True)
class Notice:
    """One sd_notify datagram."""

    index: int
    at: float  # time.monotonic() when it was received
    fields: dict[str, str]
    raw: str


@dataclass(frozen=True)
class Mark:
    """A point in time: what arrives or ends after it counts (see RunningDaemon.mark)."""

    index: int  # notices from this index on came after the mark
    updated: str | None  # daemon.json's `updated` at the mark


StatusMatch = str | Callable[[str], bool]


class RunningDaemon:
    """`edge-certd --config <tree> run` under a NOTIFY_SOCKET this object owns.

    Started by the constructor unless `start=False`; `start()` again after `stop()`
    restarts it with the same socket, so `notices` spans every run. `prefix` runs it
    under another command (strace). Use as a context manager: it is always stopped.
    """

    def __init__(
        self,
        tree: Tree,
        *,
        env: dict[str, str] | None = None,
        watchdog_usec: int | None = None,
        prefix: Sequence[str] = (),
        python: str = sys.executable,
        start: bool = True,
    ) -> None:
        self.tree = tree
        self.prefix = list(prefix)
        self.python = python
        self.state_dir = Path(tree.config()["state_dir"])
        self.env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
        self._sock_dir = tempfile.mkdtemp(prefix="ecn-")
        self.socket_path = os.path.join(self._sock_dir, "notify")
        self.env.update(
            {
                "NOTIFY_SOCKET": self.socket_path,
                "EDGE_CERTD_LOG": "stderr",
                "PYTHONFAULTHANDLER": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                **(env or {}),
            }
        )
        if watchdog_usec:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        # Beside the tree, not in it: the crash tests count every write under the tree.
        self.log_path = tree.root.parent / f"daemon-{time.monotonic_ns()}.log"
        self.notices: list[Notice] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self._arrived = threading.Condition()
        self._receiving = threading.Lock()
        self._closing = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.sock.setblocking(False)
        self._reading = threading.Thread(target=self._reader, daemon=True)
        self._reading.start()
        if start:
            self.start()

    def __enter__(self) -> RunningDaemon:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the process -----------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the daemon; `spawned_at` is the monotonic time just before the spawn."""
        if self.alive:
            raise RuntimeError("the daemon is already running")
        argv = [*self.prefix, self.python, "-m", "edge_certd", "--config", str(self.tree.config_path), "run"]
        with open(self.log_path, "ab") as log:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO),
                env=self.env,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The daemon's pid. Under a prefix (strace) it is the prefix's child: strace itself
        ignores SIGTERM while its tracee runs, and a tracer that dies leaves it running."""
        assert self.proc is not None, "not started"
        if not self.prefix:
            return self.proc.pid
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return self.proc.pid
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGABRT (stacks to the log) and SIGKILL; returns the exit code.
        Every datagram the daemon sent (STOPPING=1 too) is in `notices` by then."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            daemon = self.pid
            os.kill(daemon, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(daemon, signal.SIGABRT)  # PYTHONFAULTHANDLER: all stacks to the log
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(daemon, signal.SIGKILL)
                    self.proc.kill()
                    self.proc.wait()
        self._receive()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the daemon and close the socket."""
        self.stop()
        self._closing.set()
        self._reading.join(5)
        self.sock.close()
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def log(self) -> str:
        """Everything the daemon wrote to stdout and stderr, every run."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- notifications ---------------------------------------------------------------------

    def _reader(self) -> None:
        while not self._closing.is_set():
            try:
                readable, _, _ = select.select([self.sock], [], [], 0.1)
            except (OSError, ValueError):
                return  # closed
            if readable:
                self._receive()

    def _receive(self) -> None:
        """Take every datagram queued on the socket into `notices`. Whichever thread calls
        it, what the kernel had queued before the call is in `notices` when it returns."""
        with self._receiving:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return  # closed
                at = time.monotonic()
                raw = data.decode("utf-8", "replace")
                fields = dict(line.partition("=")[::2] for line in raw.splitlines())
                with self._arrived:
                    self.notices.append(Notice(len(self.notices), at, fields, raw))
                    self._arrived.notify_all()

    def fields(self) -> list[str]:
        """Every KEY=value line received, in order."""
        with self._arrived:
            return [line for n in self.notices for line in n.raw.splitlines()]

    def statuses(self) -> list[str]:
        with self._arrived:
            return [n.fields["STATUS"] for n in self.notices if "STATUS" in n.fields]

    def last_status(self) -> str:
        statuses = self.statuses()
        return statuses[-1] if statuses else ""

    def count(self, field: str) -> int:
        """How many datagrams so far carried `field`, e.g. "WATCHDOG=1"."""
        with self._arrived:
            return sum(field in n.raw.splitlines() for n in self.notices)

    # -- the daemon's record and the state lock --------------------------------------------

    def record(self) -> dict[str, Any]:
        """daemon.json, the daemon's own record: it writes it last in every sync."""
        try:
            doc = json.loads((self.state_dir / "daemon.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def lock_free(self) -> bool:
        """Whether no sync (the daemon's or a CLI's) holds state_dir/lock right now."""
        try:
            fd = os.open(self.state_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # and with it the shared lock, at once
        return True

    # -- waiting ---------------------------------------------------------------------------

    def mark(self) -> Mark:
        """Take this before an action; pass it to a wait for what the action causes.
        Datagrams already queued on the socket count as before the mark."""
        self._receive()
        with self._arrived:
            index = len(self.notices)
        return Mark(index, self.record().get("updated"))

    def _wait(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        """Call `probe` until it returns something other than None (on every datagram and
        every POLL seconds); raise with the notifications and the log when `timeout` runs
        out or the daemon exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found is not None:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                self._receive()  # what it sent before it went
                found = probe()
                if found is not None:
                    return found
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) before {what}\n{self.report()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:.0f} s\n{self.report()}")
            with self._arrived:
                self._arrived.wait(min(left, POLL))

    def report(self) -> str:
        with self._arrived:
            notices = [(round(n.at - self.spawned_at, 3), n.raw) for n in self.notices]
        return (
            f"notifications (s since spawn, datagram): {notices}\n"
            f"daemon record: {self.record()}\nlog:\n{self.log()[-6000:]}"
        )

    def wait_for(
        self,
        predicate: Callable[[dict[str, str]], bool],
        mark: Mark | None = None,
        timeout: float = TIMEOUT,
        what: str = "matching notification",
    ) -> Notice:
        """The first datagram after `mark` (or ever) whose fields satisfy `predicate`."""
        start = mark.index if mark else 0

        def probe() -> Notice | None:
            with self._arrived:
                return next((n for n in self.notices[start:] if predicate(n.fields)), None)

        result: Notice = self._wait(probe, timeout, what)
        return result

    def wait_ready(self, mark: Mark | None = None, timeout: float = TIMEOUT) -> Notice:
        """READY=1 after `mark`: start-up or a reload is over, its sync included."""
        return self.wait_for(lambda f: f.get("READY") == "1", mark, timeout, "READY=1")

    def wait_status(
        self, status: StatusMatch, mark: Mark | None = None, timeout: float = TIMEOUT, what: str = ""
    ) -> str:
        """The first STATUS= datagram after `mark` that matches: for a state that may pass
        again at once (a failure the next retry heals). Where things stand at the end of a
        sync is `wait_synced`'s."""

        def matches(fields: dict[str, str]) -> bool:
            line = fields.get("STATUS")
            if line is None:
                return False
            return status in line if isinstance(status, str) else status(line)

        notice = self.wait_for(matches, mark, timeout, what or f"STATUS~{status!r}")
        return notice.fields["STATUS"]

    @contextlib.contextmanager
    def hold_lock(self, timeout: float = TIMEOUT) -> Iterator[None]:
        """Hold state_dir/lock, as a CLI sync does: no sync runs (a retry waits) while the
        test looks at the trust files. Taken once the sync holding it, if any, is over."""
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:

            def take() -> bool | None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                return True

            self._wait(take, timeout, "the state lock")
            yield
        finally:
            os.close(fd)

    def wait_synced(
        self,
        mark: Mark,
        status: StatusMatch | None = None,
        check: Callable[[], bool] | None = None,
        timeout: float = TIMEOUT,
        what: str = "",
    ) -> str:
        """Wait for the end of a sync that ended after `mark`; return its STATUS= line.

        `status` (a substring, or a test of the line) and `check` (anything on disk) must
        hold at that end, or the wait goes on to the end of a later sync. At the return
        no sync holds the state lock, so no trust file is half-way through a sync.
        """

        def probe() -> str | None:
            record = self.record()
            if record.get("state") not in ("running", "degraded"):
                return None  # no record yet, or the one `stop` writes
            if record.get("updated") == mark.updated:
                return None  # no sync has ended since the mark
            line = record.get("status_line")
            if line != self.last_status():
                return None  # its STATUS= (or, after a reload, READY=1's) is not here yet
            if not self.lock_free():
                return None  # another sync is under way
            if self.record() != record:
                return None  # one ended meanwhile: look again
            if isinstance(status, str) and status not in line:
                return None
            if callable(status) and not status(line):
                return None
            if check is not None and not check():
                return None
            return str(line)

        wanted = what or (
            "the end of a sync" + (f" with STATUS~{status!r}" if isinstance(status, str) else "")
        )
        result: str = self._wait(probe, timeout, wanted)
        return result


def wait_until(
    check: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition", interval: float = 0.05
) -> None:
    """For conditions outside the daemon (a process gone, a tool run counted)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)
