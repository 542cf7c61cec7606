"""What a sync tells the journal: installs, removals, and each problem once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edge_certd import events
from edge_certd.model import Plan

if TYPE_CHECKING:  # sync imports this module; the type alone is needed here
    from edge_certd.sync import SyncResult


def log_sync_events(result: SyncResult, plan: Plan, last_status: dict[str, Any]) -> None:
    """Emit one journal event per change, and per rejection or source problem that is new.

    `last_status` is status.json from before this sync: what it already lists was logged
    when it first appeared, so a rescan does not repeat it.
    """
    for ca in plan.add:
        source = ", ".join(sorted(result.managed[ca.sha256].sources))
        events.emit("installed", f'installed root CA "{ca.subject}" (sha256 {ca.sha256[:16]}…) '
                    f"from {source}", sha256=ca.sha256, subject=ca.subject, source=source)
    for gone in plan.remove:
        events.emit("removed", f'removed root CA "{gone.subject}" (sha256 {gone.sha256[:16]}…): '
                    "no source provides it any more", sha256=gone.sha256, subject=gone.subject)
    previous = {(r.get("source"), r.get("content_sha256"), r.get("code"))
                for r in last_status.get("rejected", [])}
    known_errors = {(e.get("path"), e.get("reason")) for e in last_status.get("source_errors", [])}
    for verdict in result.verdicts:
        for rej in verdict.rejected:
            if (rej.source, verdict.content_sha256, rej.code) in previous:
                continue  # logged when this content first arrived; status still lists it
            event = "private_key" if rej.code == "private_key" else "rejected"
            level = logging.ERROR if rej.code == "private_key" else logging.WARNING
            events.emit(event, rej.describe(), level, sha256=rej.sha256, subject=rej.subject,
                        source=rej.source, reason=rej.code)
    for error in result.source_errors:
        if (error.path, error.reason) in known_errors:
            continue  # still the same problem; status keeps showing it
        events.emit("source_error", str(error), logging.WARNING, source=error.path,
                    reason=error.reason)
    if result.trust_changed:
        events.emit("synced", f"trust updated: {len(plan.add)} added, {len(plan.remove)} "
                    f"removed, {len(result.managed)} CAs managed ({result.update_summary})")
