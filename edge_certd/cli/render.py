"""What the CLI prints for list, status, inspect and sync. Text only; reads nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_certd.core.model import FORMAT_LABELS, FileVerdict
from edge_certd.core.text import iso, plural

# A sync's summary names this many rejections; a directory of junk must not flood a terminal.
MAX_PRINTED = 50


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
        lines.append(f"    expires {item['not_after']} ({_days(item)})  file {item['path']}")
        lines.append(f"    from {', '.join(item['sources'])}")
        if item.get("packages"):
            lines.append(f"    package {', '.join(item['packages'])}")
    return "\n".join(lines)


def _render_status(doc: dict[str, Any]) -> str:
    lines = []
    daemon = doc.get("daemon") or {}
    if daemon:
        lines.append(
            f"daemon: {daemon.get('state', 'unknown')} (pid {daemon.get('pid')}) — "
            f"{daemon.get('status_line', '')}"
        )
    else:
        lines.append("daemon: no record (edge-certd run has not reported)")
    for probe in daemon.get("gateway") or []:
        lines.extend(_gateway_lines(probe))
    last = doc.get("last_sync") or {}
    if last:
        result = last.get("result")
        extra = f": {last.get('error')}" if last.get("error") else ""
        lines.append(f"last sync: {last.get('time')} {result}{extra}")
    lines.append(f"trusted CAs: {len(doc['trusted'])}")
    for item in doc["trusted"]:
        packages = f"  package {', '.join(item['packages'])}" if item.get("packages") else ""
        expires = f"expires {item['not_after']}, {_days(item)}"
        lines.append(f"  {item['sha256'][:16]}  {item['subject']}  ({expires}){packages}")
    for hold in doc.get("held_for_gateway") or []:
        lines.append(
            f"  held for gateway {hold.get('gateway')}: {str(hold.get('sha256'))[:16]}  "
            f"{hold.get('subject')}  (its source is gone; kept until {hold.get('until')} or until "
            "the gateway moves to another root)"
        )
    for item in doc["expiring"]:
        lines.append(f"expiring: {item['subject']} in {item['days_left']} days ({item['not_after']})")
    if doc["rejected"]:
        files = doc.get("rejected_files_total") or len({r["source"] for r in doc["rejected"]})
        lines.append(f"rejected files: {files}")
        for rej in doc["rejected"]:
            who = f" {rej['subject']}" if rej.get("subject") else ""
            lines.append(f"  {rej['source']}{_format_note(rej)}:{who} {rej['code']}: {rej['message']}")
        lines.extend(
            _more(
                doc.get("rejected_total", 0), len(doc["rejected"]), "rejection", doc.get("rejected_by_reason")
            )
        )
    for item in doc["ignored"]:
        label = FORMAT_LABELS.get(item.get("format", ""), item.get("format", ""))
        lines.append(f"  {item['source']} ({label}): ignored: {item['what']}")
    lines.extend(_more(doc.get("ignored_total", 0), len(doc["ignored"]), "ignored item"))
    for err in doc["source_errors"]:
        lines.append(f"source problem: {err['path']} {err['reason']}")
    for note in doc.get("notes") or []:
        lines.append(f"note: {note.get('message', '')}")
    for failure in doc.get("target_failures") or []:
        lines.append(f"not updated: {failure['target']}: {failure['message']}")
    bundles = doc.get("bundles") or {}
    for key in ("edge_roots", "ca_bundle", "java", "env_file"):
        if bundles.get(key):
            lines.append(f"{key.replace('_', ' ')}: {bundles[key]}")
    return "\n".join(lines)


def _more(total: int, shown: int, noun: str, by_reason: dict[str, int] | None = None) -> list[str]:
    if total <= shown:
        return []
    counts = ", ".join(f"{code} {count}" for code, count in (by_reason or {}).items())
    return [f"  … and {plural(total - shown, 'more ' + noun)} ({counts or 'not listed'})"]


def _days(item: dict[str, Any]) -> str:
    left = item.get("days_left")
    if not isinstance(left, int):
        return "days left unknown"
    return "expired" if left < 0 else f"{plural(left, 'day')} left"


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
            lines.append(
                f"  would trust: {ca.subject} (sha256 {ca.sha256[:16]}…, expires {iso(ca.not_after)})"
            )
        for rej in verdict.rejected:
            who = f"{rej.subject} " if rej.subject else ""
            lines.append(f"  rejected: {who}({rej.code}) {rej.message}")
        for ign in verdict.ignored:
            lines.append(f"  ignored: {ign.what}")
        if not (verdict.accepted or verdict.rejected or verdict.ignored):
            lines.append("  nothing to trust in this file")
    return "\n".join(lines)


def _gateway_lines(probe: dict[str, Any]) -> list[str]:
    """The gateway watch's last probe of one endpoint (daemon.json, escaped by the daemon)."""
    lines = [f"gateway {probe.get('gateway')}: {probe.get('state')} (checked {probe.get('checked_at')})"]
    for store in probe.get("stores") or []:
        verdict = "trusts it" if store.get("trusted") else f"does NOT trust it ({store.get('problem')})"
        lines.append(f"    {store.get('store')}: {verdict}")
    for cert in probe.get("chain") or []:
        lines.append(f"    [{cert.get('position')}] {cert.get('subject')}  notAfter {cert.get('not_after')}")
    if probe.get("test_only"):
        lines.append(f"    warning: {probe.get('test_only')}")
    if probe.get("state") != "trusted" and probe.get("fix"):
        lines.append(f"    fix: {probe.get('fix')}")
    return lines
