"""Run the real `edge-certd run` with a real NOTIFY_SOCKET owned by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Tree

PROJECT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """The daemon in a subprocess; every sd_notify datagram it sends lands in `messages`."""

    def __init__(self, tree: Tree, watchdog_usec: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.tree = tree
        self.socket_path = str(tree.root / f"notify-{time.monotonic_ns()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.log_path = tree.root / f"daemon-{time.monotonic_ns()}.log"
        env = {**os.environ, "NOTIFY_SOCKET": self.socket_path, "PYTHONPATH": str(PROJECT),
               **(extra_env or {})}
        env.pop("WATCHDOG_USEC", None)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), "run"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(PROJECT))
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def fields(self) -> list[str]:
        """Every KEY=value line received, in order."""
        return [line for message in list(self.messages) for line in message.splitlines()]

    def statuses(self) -> list[str]:
        return [f[len("STATUS="):] for f in self.fields() if f.startswith("STATUS=")]

    def wait_for(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or check}:\nnotify={self.fields()}\n"
                             f"log:\n{self.log()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda: "READY=1" in self.fields(), timeout, "READY=1")

    def wait_status(self, text: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda: any(text in s for s in self.statuses()), timeout, f"STATUS~{text}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stop.set()
        self._reader.join(timeout=2)
        self.sock.close()
        self._log.close()
        return self.proc.returncode
