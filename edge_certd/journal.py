"""Structured log events: journald fields when the journal is there, the same text on stderr otherwise.

Each event kind has a fixed MESSAGE_ID, so `journalctl MESSAGE_ID=<id>` finds every one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

LOGGER_NAME = "edge_certd"

MESSAGE_IDS = {
    "installed": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a51",
    "removed": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a52",
    "rejected": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a53",
    "synced": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a54",
    "update_failed": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a55",
    "expiring": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a56",
    "private_key": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a57",
    "source_error": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a58",
    "config": "6f1a2c3e4b5d4e6f8a9b0c1d2e3f4a59",
}

_FIELDS = ("EDGE_CERTD_EVENT", "CERT_SHA256", "CERT_SUBJECT", "SOURCE_PATH", "REASON")

log = logging.getLogger(LOGGER_NAME)


def emit(event: str, message: str, level: int = logging.INFO, *, sha256: str | None = None,
         subject: str | None = None, source: str | None = None, reason: str | None = None) -> None:
    """Log one event with its journal fields. Never pass key material here."""
    fields: dict[str, Any] = {"EDGE_CERTD_EVENT": event, "MESSAGE_ID": MESSAGE_IDS[event]}
    if sha256:
        fields["CERT_SHA256"] = sha256
    if subject:
        fields["CERT_SUBJECT"] = subject
    if source:
        fields["SOURCE_PATH"] = source
    if reason:
        fields["REASON"] = reason
    log.log(level, "%s", message, extra=fields)


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


def setup_logging(to_journal: bool, level: int = logging.INFO,
                  stream: Any = None) -> logging.Handler:
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
