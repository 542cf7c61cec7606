"""What the CLI prints: list, status, inspect and sync summaries. Reads state; writes nothing."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from typing import Any

from edge_certd import events
from edge_certd.config import Config
from edge_certd.formats import FORMAT_LABELS
from edge_certd.model import FileVerdict
from edge_certd.state import StatePaths, iso, load_manifest, load_status, parse_iso
from edge_certd.sync import SyncResult


def list_cas(config: Config) -> list[dict[str, Any]]:
    entries = load_manifest(StatePaths(config.state_dir)).entries
    return [
        {"sha256": e.sha256, "subject": e.subject, "not_before": iso(e.not_before),
         "not_after": iso(e.not_after), "path": e.path, "sources": list(e.sources),
         "installed_at": iso(e.installed_at)}
        for e in sorted(entries.values(), key=lambda e: (e.subject, e.sha256))
    ]


def expiring(config: Config, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Managed CAs within the largest warning window, soonest first."""
    now = now or dt.datetime.now(dt.UTC)
    window = dt.timedelta(days=max(config.expiry.warn_days or [0]))
    soon = []
    for item in list_cas(config):
        left = parse_iso(item["not_after"]) - now
        if left <= window:
            soon.append({**item, "days_left": left.days})
    return sorted(soon, key=lambda item: item["not_after"])


def status(config: Config) -> dict[str, Any]:
    doc = load_status(StatePaths(config.state_dir))
    return {
        "trusted": list_cas(config),
        "last_sync": doc.get("last_sync"),
        "last_change": doc.get("last_change"),
        "rejected": doc.get("rejected", []),
        "ignored": doc.get("ignored", []),
        "source_errors": doc.get("source_errors", []),
        "expiring": expiring(config),
        "daemon": doc.get("daemon"),
        "bundles": doc.get("bundles") or {"env_file": config.bundles.env_file},
    }


def render(data: Any) -> str:
    if isinstance(data, list):
        return _render_list(data)
    return _render_status(data)


def _render_list(items: Sequence[dict[str, Any]]) -> str:
    if not items:
        return "no CAs managed by edge-certd"
    lines = []
    for item in items:
        lines.append(f"{item['sha256'][:16]}  {item['subject']}")
        lines.append(f"    expires {item['not_after']}  file {item['path']}")
        lines.append(f"    from {', '.join(item['sources'])}")
    return "\n".join(lines)


def _render_status(doc: dict[str, Any]) -> str:
    lines = []
    daemon = doc.get("daemon") or {}
    if daemon:
        lines.append(f"daemon: {daemon.get('state', 'unknown')} (pid {daemon.get('pid')}) — "
                     f"{daemon.get('status_line', '')}")
    else:
        lines.append("daemon: no record (edge-certd run has not reported)")
    last = doc.get("last_sync") or {}
    if last:
        result = last.get("result")
        extra = f": {last.get('error')}" if last.get("error") else ""
        lines.append(f"last sync: {last.get('time')} {result}{extra}")
    lines.append(f"trusted CAs: {len(doc['trusted'])}")
    for item in doc["trusted"]:
        lines.append(f"  {item['sha256'][:16]}  {item['subject']}  (expires {item['not_after']})")
    for item in doc["expiring"]:
        lines.append(f"expiring: {item['subject']} in {item['days_left']} days "
                     f"({item['not_after']})")
    if doc["rejected"]:
        lines.append(f"rejected files: {len({r['source'] for r in doc['rejected']})}")
        for rej in doc["rejected"]:
            who = f" {rej['subject']}" if rej.get("subject") else ""
            lines.append(f"  {rej['source']}{_format_note(rej)}:{who} {rej['code']}: "
                         f"{rej['message']}")
    for item in doc["ignored"]:
        label = FORMAT_LABELS.get(item.get("format", ""), item.get("format", ""))
        lines.append(f"  {item['source']} ({label}): ignored: {item['what']}")
    for err in doc["source_errors"]:
        lines.append(f"source problem: {err['path']} {err['reason']}")
    bundles = doc.get("bundles") or {}
    for key in ("edge_roots", "ca_bundle", "java", "env_file"):
        if bundles.get(key):
            lines.append(f"{key.replace('_', ' ')}: {bundles[key]}")
    return "\n".join(lines)


def _format_note(item: dict[str, Any]) -> str:
    """` (PKCS#12 / PFX)`: which format was detected, when one was; a technician fixing a
    Key Vault export needs to know which `az` command or extension shape it came from."""
    fmt = item.get("format") or "unknown"
    return "" if fmt == "unknown" else f" ({FORMAT_LABELS.get(fmt, fmt)})"


def inspect_text(verdicts: Sequence[FileVerdict]) -> str:
    lines = []
    for verdict in verdicts:
        lines.append(f"{verdict.source}: {FORMAT_LABELS.get(verdict.format, verdict.format)}")
        for ca in verdict.accepted:
            lines.append(f"  would trust: {ca.subject} (sha256 {ca.sha256[:16]}…, "
                         f"expires {iso(ca.not_after)})")
        for rej in verdict.rejected:
            who = f"{rej.subject} " if rej.subject else ""
            lines.append(f"  rejected: {who}({rej.code}) {rej.message}")
        for ign in verdict.ignored:
            lines.append(f"  ignored: {ign.what}")
        if not (verdict.accepted or verdict.rejected or verdict.ignored):
            lines.append("  nothing to trust in this file")
    return "\n".join(lines)


def sync_summary(result: SyncResult) -> str:
    lines = [f"{len(result.managed)} CAs managed; {len(result.added)} added, "
             f"{len(result.removed)} removed"
             + (f" ({result.update_summary})" if result.update_summary else "")]
    for ca in result.added:
        lines.append(f"  installed {ca.subject} (sha256 {ca.sha256[:16]}…)")
    for gone in result.removed:
        lines.append(f"  removed {gone.subject} (sha256 {gone.sha256[:16]}…)")
    for rej in result.rejected:
        lines.append(f"  {rej.describe()}")
    for error in result.source_errors:
        lines.append(f"  {error}")
    lines.extend(f"  note: {note}" for note in result.notes)
    return "\n".join(lines)


def status_line(config: Config, degraded: str | None = None) -> str:
    """The one human line for systemd's STATUS=."""
    if degraded:
        return f"degraded: {degraded}"
    doc = load_status(StatePaths(config.state_dir))
    count = len(load_manifest(StatePaths(config.state_dir)).entries)
    parts = [f"{count} CA{'s' if count != 1 else ''} trusted"]
    if doc.get("last_change"):
        stamp = parse_iso(doc["last_change"]).astimezone().strftime("%H:%M:%S")
        added, removed = doc.get("last_change_counts") or [0, 0]
        parts.append(f"last change {stamp} (+{added} −{removed})")
    rejected = len({r["source"] for r in doc.get("rejected", [])})
    if rejected:
        parts.append(f"{rejected} file{'s' if rejected != 1 else ''} rejected")
    # A source that cannot be read safely keeps what it gave, but nothing new comes in.
    for error in doc.get("source_errors") or []:
        parts.insert(0, f"degraded: source directory {error['path']} {error['reason']}; "
                        "keeping the CAs it provided")
    soon = expiring(config)
    if soon:
        parts.append(f"{soon[0]['subject']} expires in {soon[0]['days_left']} days")
    return " · ".join(parts)


def setup_cli_logging() -> None:
    """One-shot commands print their own summary; the journal, when present, gets the events."""
    if events.journal_available() and os.environ.get("EDGE_CERTD_LOG") != "stderr":
        events.setup_logging(to_journal=True)
    else:
        events.setup_logging(to_journal=False, level=logging.WARNING)
