"""Structured log events: journald fields when the journal is there, the same text on stderr otherwise.

Each event kind has a fixed MESSAGE_ID, so `journalctl MESSAGE_ID=<id>` finds every one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

LOGGER_NAME = "edge_certd"

MESSAGE_IDS = {
    "installed": "7f392d4425cc4692af77b71f832d25e4",
    "removed": "0d6c6e86e6f24f9792bce1edec7834fd",
    "rejected": "988adbe67ae14a45a423722249b8d2b1",
    "synced": "a4cca36b6d4b4c7895d11fe34a8ba7e7",
    "update_failed": "c3aa74928b584d6ca96366e6432f5d93",
    "expiring": "8c680637b9ce4d6594ee3f0c32836141",
    "private_key": "b51c69361c6443ed98a1f12b2664bb83",
    "source_error": "bd6dc1e0aefc418dac0e06f0a172db65",
    "config": "cfabecacc0ca4843a8b55319d1fe6f55",
    "control": "b1b7b4a5cb024b529906f5f6717553b2",
    # the gateway watch (daemon/gateway.py), one per kind of change
    "gateway_trusted": "527bc64b18b045d88ec6ed8b000cb702",
    "gateway_renewed": "61d13197febb43289423ad375d49002b",
    "gateway_anchor_changed": "ec8df54cc68f417487f06006a5c1787c",
    "gateway_untrusted": "ff3b018d35464d5e9c7eea29142dd93c",
    "gateway_unreachable": "9a061d941ee2466ea23a68c70c548009",
    "gateway_recovered": "95702584e1bf4c7fa43be68c37ea1b63",
    "gateway_expiring": "564f4833bde0458c90399adb885ad276",
    "gateway_test_only": "b7ab7e5e3b194ce7851a1e5fc8d856cf",
    # a root kept while the gateway still anchors at it (core/hold.py, sync/holds.py)
    "ca_held_for_gateway": "c5659bde5d3e472093f5063bb919478f",
    "ca_hold_released": "b7af752abc184d32a60ad9c176d67a54",
    "started": "4442b9094bcd4d89ac850da17ada2b97",
    "judge_unavailable": "6637b5b89d9e466e903400015f0cff81",
}

_FIELDS = ("EDGE_CERTD_EVENT", "CERT_SHA256", "CERT_SUBJECT", "SOURCE_PATH", "REASON", "GATEWAY")

log = logging.getLogger(LOGGER_NAME)


def emit(
    event: str,
    message: str,
    level: int = logging.INFO,
    *,
    sha256: str | None = None,
    subject: str | None = None,
    source: str | None = None,
    reason: str | None = None,
    gateway: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Log one event with its journal fields. Never pass key material here.

    `extra` adds journal fields of the event's own (upper-case names, values from edge-certd's
    own escaped and bounded text).
    """
    fields: dict[str, Any] = {"EDGE_CERTD_EVENT": event, "MESSAGE_ID": MESSAGE_IDS[event]}
    if sha256:
        fields["CERT_SHA256"] = sha256
    if subject:
        fields["CERT_SUBJECT"] = subject
    if source:
        fields["SOURCE_PATH"] = source
    if reason:
        fields["REASON"] = reason
    if gateway:
        fields["GATEWAY"] = gateway
    for name, value in (extra or {}).items():
        fields.setdefault(name, value)
    # The message is the whole format string and no arguments follow: python-systemd's
    # JournalHandler stores a record's args again as CODE_ARGS, and logging formats with
    # `%` only when there are args, so a `%` in a file name is still printed as itself.
    log.log(level, message, extra=fields)


class _StderrFormatter(logging.Formatter):
    """The journal's MESSAGE plus its fields, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        extras = [f"{name}={getattr(record, name)}" for name in _FIELDS if hasattr(record, name)]
        return text + (f" [{' '.join(extras)}]" if extras else "")


def journal_available() -> bool:
    return os.path.exists("/run/systemd/journal/socket")


def running_under_systemd() -> bool:
    # systemd sets these for services; their presence means our stderr already reaches
    # the journal, but only the native protocol carries the structured fields.
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup_logging(to_journal: bool, level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Send edge-certd's log to the journal or to a stream (stderr by default)."""
    handler: logging.Handler
    if to_journal:
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="edge-certd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_StderrFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return handler
