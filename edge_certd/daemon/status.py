"""The one human line for systemd's STATUS=, built from the last sync's result. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from edge_certd.core.expiry import expiring
from edge_certd.core.hold import status_fragment as hold_fragment
from edge_certd.core.model import SyncResult
from edge_certd.core.text import plural


def status_line(
    result: SyncResult | None, *, warn_days: Sequence[int], now: dt.datetime, problem: str | None = None
) -> str:
    """`3 CAs trusted · last change 12:03:04 (+1 −0) · 1 file rejected`, or
    `degraded: …` when the daemon could not apply trust or refused a reload."""
    if problem or result is None:
        return f"degraded: {problem or 'no sync has finished yet'}"
    parts = [f"{plural(len(result.managed), 'CA')} trusted"]
    if result.last_change is not None:
        stamp = result.last_change.time.astimezone().strftime("%H:%M:%S")
        parts.append(f"last change {stamp} (+{result.last_change.added} −{result.last_change.removed})")
    held = hold_fragment(result.held_for_gateway)
    if held:
        parts.append(held)
    if result.judge_unavailable:
        parts.append(f"{plural(len(result.judge_unavailable), 'file')} held: the judge is unavailable")
    if result.rejected_files:
        parts.append(f"{plural(result.rejected_files, 'file')} rejected")
    # A source that cannot be read safely keeps what it gave, but nothing new comes in.
    for source in result.source_problems:
        parts.insert(
            0, f"degraded: source directory {source.path} {source.reason}; keeping the CAs it provided"
        )
    soon = expiring(result.managed.values(), warn_days, now)
    if soon:
        parts.append(f"{soon[0].ca.subject} expires in {soon[0].days_left} days")
    return " · ".join(parts)
