"""Text for people: escaping what came from outside, one time format, counted nouns. Pure."""

from __future__ import annotations

import datetime as dt

# A subject, a file name or a reason longer than this is cut: a hostile certificate must not
# make one status line or journal field megabytes long.
MAX_FIELD = 200


def printable(text: str, limit: int = MAX_FIELD) -> str:
    """Escape control characters (NUL, newlines) so a hostile name cannot forge a log line."""
    if text.isprintable() and len(text) <= limit:
        return text  # nearly every name: skip the per-character walk (bench/b4_restart.py)
    safe = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def iso(moment: dt.datetime) -> str:
    """The one machine time format: ISO 8601 in UTC with a Z."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 CA`, `2 CAs`, `0 files`."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
