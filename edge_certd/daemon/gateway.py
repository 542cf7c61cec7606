"""The daemon's side of the gateway watch: it writes the probe's plan and reads its results.

The probe (edge-certd-probe.service) has the network and no privilege; the daemon has
privilege and no network. So the daemon resolves what the probe may not read (a connection
string file) into a plan, and turns each result the probe writes into journal events (once
each, remembered across restarts), its part of STATUS=, daemon.json and the metrics. The
result is read as hostile: bounded, without following links, decoded strictly.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.gateway import (
    EventKind,
    GatewayEvent,
    GatewayState,
    Memory,
    Probe,
    ResultError,
    Severity,
    changes,
    result_from_json,
    status_fragment,
)
from edge_certd.core.text import printable
from edge_certd.core.wire import json_nests_deeper
from edge_certd.diagnose.watch import PLAN_NAME, plan_for_config
from edge_certd.store.fsutil import ReadError, read_bounded, write_atomic
from edge_certd.sync import journal as events

MEMORY_NAME = "gateway-memory.json"
MAX_RESULT_BYTES = 256 * 1024

_EVENT_NAMES = {
    EventKind.FIRST: "gateway_trusted",
    EventKind.RENEWED: "gateway_renewed",
    EventKind.ANCHOR_CHANGED: "gateway_anchor_changed",
    EventKind.UNTRUSTED: "gateway_untrusted",
    EventKind.UNREACHABLE: "gateway_unreachable",
    EventKind.RECOVERED: "gateway_recovered",
    EventKind.EXPIRING: "gateway_expiring",
    EventKind.TEST_ONLY: "gateway_test_only",
}
_LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.NOTICE: logging.INFO,  # python's logging has no NOTICE; the journal field says it
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
}


class GatewayWatch:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.probes: tuple[Probe, ...] = ()
        self.problem: str | None = None  # why the last result could not be read
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the last read
        self._memory = self._load_memory()

    @property
    def enabled(self) -> bool:
        gateway = self.config.gateway
        return bool(gateway.host or gateway.connection_string_file)

    @property
    def result_dir(self) -> str:
        """The directory to watch, links resolved: with DynamicUser=, systemd makes
        /var/lib/edge-certd-probe a link to private/edge-certd-probe, and inotify (through
        watchdog, which adds IN_DONT_FOLLOW) would watch the link, never what is in it. The
        daemon re-resolves it at every re-watch, so the link appearing after start is seen."""
        return os.path.realpath(os.path.dirname(self.config.gateway.result_file))

    def write_plan(self) -> None:
        """The plan for the probe, at start and at each reload; only on change."""
        path = os.path.join(self.config.state_dir, PLAN_NAME)
        try:
            plan = plan_for_config(self.config) if self.enabled else None
            if plan is None:
                if os.path.exists(path):
                    os.unlink(path)
                return
            write_atomic(path, (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)
        except (EdgeCertdError, OSError) as exc:
            events.emit(
                "config",
                f"the gateway watch has no plan: {exc}; the probe falls back to the configuration",
                logging.WARNING,
                reason="gateway_plan",
            )

    def refresh(self, now: dt.datetime) -> bool:
        """Read the probe's result when it changed; log what it says that is new.

        Returns whether anything the daemon shows changed. Never raises.
        """
        if not self.enabled:
            return False
        path = self.config.gateway.result_file
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            return False  # no probe has run yet
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            data = read_bounded(path, MAX_RESULT_BYTES)
            if json_nests_deeper(data, 8):
                raise ResultError("not a result the probe writes")
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ResultError("not a JSON object")
            probes = result_from_json(doc)
        except (ResultError, ValueError, OSError, EdgeCertdError) as exc:
            problem = f"the gateway probe's result {path} cannot be used ({printable(str(exc), 120)})"
            if problem != self.problem:
                events.emit("config", problem, logging.WARNING, reason="gateway_result")
            self.problem = problem
            return True
        self.problem = None
        self.probes = probes
        for probe in probes:
            found, self._memory[probe.gateway] = changes(
                self._memory.get(probe.gateway), probe, warn_days=self.config.gateway.warn_days, now=now
            )
            for event in found:
                _log(event)
        self._save_memory()
        return True

    def status(self, now: dt.datetime) -> str | None:
        """The gateway's part of STATUS=: one fragment per endpoint."""
        if not self.enabled:
            return None
        if self.problem:
            return "gateway: probe result unreadable"
        if not self.probes:
            return "gateway not checked yet"
        return " · ".join(status_fragment(p, now) for p in self.probes)

    def record(self) -> list[dict[str, Any]]:
        """The last probe per endpoint, for daemon.json (and so `edge-certd status`)."""
        from edge_certd.core.gateway import result_to_json

        return list(result_to_json(self.probes, dt.datetime.now(dt.UTC))["gateways"])

    def _load_memory(self) -> dict[str, Memory]:
        path = os.path.join(self.config.state_dir, MEMORY_NAME)
        try:
            data = read_bounded(path, MAX_RESULT_BYTES, follow_links=True)
            doc = json.loads(data)
            return {str(k): _memory_from_json(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
        except (ReadError, ValueError, TypeError, KeyError, AttributeError):
            return {}  # a lost memory repeats one event per gateway, nothing worse

    def _save_memory(self) -> None:
        doc = {gateway: _memory_to_json(m) for gateway, m in sorted(self._memory.items())}
        try:
            write_atomic(
                os.path.join(self.config.state_dir, MEMORY_NAME),
                (json.dumps(doc, sort_keys=True) + "\n").encode(),
                mode=0o644,
            )
        except EdgeCertdError:
            pass  # the memory only keeps events from repeating


def _log(event: GatewayEvent) -> None:
    events.emit(
        _EVENT_NAMES[event.kind],
        event.message,
        _LEVELS[event.severity],
        gateway=event.gateway,
        sha256=event.fields.get("SHA256") or event.fields.get("ANCHOR_SHA256"),
        reason=event.fields.get("CAUSE"),
        extra={k: v for k, v in event.fields.items() if k not in ("SHA256", "CAUSE")},
    )


def _memory_to_json(memory: Memory) -> dict[str, Any]:
    return {
        "state": str(memory.state),
        "chain": list(memory.chain),
        "anchor": memory.anchor,
        "warned": {sha: list(t) for sha, t in memory.warned.items()},
        "test_only": memory.test_only,
    }


def _memory_from_json(doc: Mapping[str, Any]) -> Memory:
    return Memory(
        state=GatewayState(doc["state"]),
        chain=tuple(str(s) for s in doc["chain"][:10]),
        anchor=None if doc["anchor"] is None else str(doc["anchor"]),
        warned={str(sha): tuple(int(t) for t in ts[:16]) for sha, ts in list(doc["warned"].items())[:10]},
        test_only=None if doc["test_only"] is None else str(doc["test_only"]),
    )
