"""systemd's notify protocol through systemd-python; a no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os

from systemd import daemon as _sd  # type: ignore[attr-defined]


class Notifier:
    """Sends READY/STATUS/WATCHDOG/RELOADING/STOPPING to the service manager."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process systemd watches; only it may ping.
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._last_status = ""
        self._ready = False

    @property
    def enabled(self) -> bool:
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *fields: str) -> None:
        if not self.enabled:
            return
        try:
            _sd.notify("\n".join(fields))
        except OSError:
            # A signal interrupted a send to a stalled receiver (EINTR), or the socket is
            # gone. A lost STATUS= is better than a daemon that dies with a traceback.
            pass

    def ready(self, status: str) -> None:
        self._ready = True
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Update STATUS=; before READY=1 the start-up's own status goes out with READY."""
        if self._ready and status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
