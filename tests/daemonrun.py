"""Run the real `edge-certd run` in a subprocess, with a real AF_UNIX NOTIFY_SOCKET.

The daemon talks to the socket through systemd-python exactly as it would to systemd,
so READY=1, RELOADING=1 and STATUS= are what the service manager would see.

    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        daemon.wait_status(lambda s: "degraded" in s)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from conftest import Tree

REPO = Path(__file__).resolve().parent.parent
# Variables that would make the daemon log to the journal instead of our stderr file.
_SYSTEMD_VARS = ("JOURNAL_STREAM", "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID",
                 "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")


class RunningDaemon:
    """`edge-certd run` with its notifications collected, in order, as dicts."""

    def __init__(self, tree: Tree, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.tree = tree
        self._prefixed = bool(prefix)
        # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
        self._sock_dir = tempfile.mkdtemp(prefix="ecn-")
        self.socket_path = os.path.join(self._sock_dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.messages: list[dict[str, str]] = []
        self._arrived = threading.Condition()
        self._closing = threading.Event()
        self._reading = threading.Thread(target=self._reader, daemon=True)
        self._reading.start()
        # Beside the tree, not in it: the crash tests count every write under the tree.
        self.log_path = tree.root.parent / f"daemon-{time.monotonic_ns()}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        full_env.update({"NOTIFY_SOCKET": self.socket_path, "EDGE_CERTD_LOG": "stderr",
                         "PYTHONFAULTHANDLER": "1",
                         "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "edge_certd", "--config", str(tree.config_path),
             "run"], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO), env=full_env)

    def __enter__(self) -> RunningDaemon:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- notifications ------------------------------------------------------------------
    # A thread reads the socket all the time, as systemd does: a unix datagram queue holds
    # only net.unix.max_dgram_qlen (10) messages, and sd_notify blocks when it is full.

    def _reader(self) -> None:
        self.sock.settimeout(0.1)
        while not self._closing.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            with self._arrived:
                self.messages.append(fields)
                self._arrived.notify_all()

    def drain(self) -> None:
        time.sleep(0.05)  # what is in flight lands in `messages`

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20.0,
                 what: str = "a notification", start: int = 0) -> dict[str, str]:
        """The first message from index `start` on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        index = start
        with self._arrived:
            while True:
                while index < len(self.messages):
                    if predicate(self.messages[index]):
                        return self.messages[index]
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout} s; got {self.messages}; "
                                         f"daemon exit {self.proc.poll()}; log:\n{self.log()}")
                if self.proc.poll() is not None:
                    self._arrived.wait(0.2)
                    if index >= len(self.messages):
                        raise AssertionError(f"the daemon exited ({self.proc.returncode}) "
                                             f"before {what}; log:\n{self.log()}")
                self._arrived.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = 30.0, start: int = 0) -> dict[str, str]:
        return self.wait_for(lambda m: m.get("READY") == "1", timeout, "READY=1", start)

    def wait_status(self, predicate: Callable[[str], bool], timeout: float = 20.0,
                    what: str = "a matching STATUS=", start: int = 0) -> str:
        message = self.wait_for(lambda m: "STATUS" in m and predicate(m["STATUS"]), timeout,
                                what, start)
        return message["STATUS"]

    def last_status(self) -> str:
        self.drain()
        with self._arrived:
            statuses = [m["STATUS"] for m in self.messages if "STATUS" in m]
        return statuses[-1] if statuses else ""

    def mark(self) -> int:
        """An index for `start=`: only messages after this call count."""
        self.drain()
        with self._arrived:
            return len(self.messages)

    # -- the process ----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    @property
    def pid(self) -> int:
        """The daemon's pid. Under a prefix (strace) it is the prefix's child: strace itself
        ignores SIGTERM while its tracee runs, and a tracer that dies leaves it running."""
        if not self._prefixed:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
                                ).read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return self.proc.pid
            time.sleep(0.01)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
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
        self._log.close()
        self._closing.set()
        self._reading.join(5)
        self.sock.close()
        shutil.rmtree(self._sock_dir, ignore_errors=True)
        return self.proc.returncode


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition",
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)
