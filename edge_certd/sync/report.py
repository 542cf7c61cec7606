"""What `list` and `status` report, read from the state directory. Reads; writes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from edge_certd.config import Config
from edge_certd.core.expiry import days_left
from edge_certd.core.expiry import expiring as expiring_cas
from edge_certd.core.model import FileVerdict, InstalledCA, SyncResult
from edge_certd.core.text import iso, plural
from edge_certd.store.names import package_name
from edge_certd.store.state import StatePaths, load_manifest, load_report


def list_cas(config: Config) -> list[dict[str, Any]]:
    entries = load_manifest(StatePaths(config.state_dir)).entries
    roots = config.package_roots_dir
    return [_ca_json(e, roots) for e in sorted(entries.values(), key=lambda e: (e.subject, e.sha256))]


def _ca_json(e: InstalledCA, roots_dir: str | None) -> dict[str, Any]:
    # The roots packages (`edge-certd package`) that provide it, by name: what apt removes.
    packages = sorted({name for s in e.sources if (name := package_name(s, roots_dir))})
    return {
        "sha256": e.sha256,
        "subject": e.subject,
        "not_before": iso(e.not_before),
        "not_after": iso(e.not_after),
        "path": e.path,
        "sources": list(e.sources),
        "packages": packages,
        "installed_at": iso(e.installed_at),
        "days_left": days_left(e.not_after, dt.datetime.now(dt.UTC)),
    }


def expiring(config: Config, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Managed CAs within the largest warning window, soonest first (core.expiry's rule)."""
    entries = load_manifest(StatePaths(config.state_dir)).entries.values()
    found = expiring_cas(entries, config.expiry.warn_days, now or dt.datetime.now(dt.UTC))
    return [{**_ca_json(e.ca, config.package_roots_dir), "days_left": e.days_left} for e in found]


def status(config: Config) -> dict[str, Any]:
    paths = StatePaths(config.state_dir)
    doc = load_report(paths.status)
    return {
        "trusted": list_cas(config),
        "last_sync": doc.get("last_sync"),
        "last_change": doc.get("last_change"),
        "rejected": doc.get("rejected", []),
        "rejected_total": doc.get("rejected_total", len(doc.get("rejected", []))),
        "rejected_files_total": doc.get("rejected_files_total"),
        "rejected_by_reason": doc.get("rejected_by_reason", {}),
        "rejected_files_by_reason": doc.get("rejected_files_by_reason", {}),
        "ignored": doc.get("ignored", []),
        "ignored_total": doc.get("ignored_total", len(doc.get("ignored", []))),
        "source_errors": doc.get("source_errors", []),
        "target_failures": doc.get("target_failures", []),
        "notes": doc.get("notes", []),
        "held_for_gateway": doc.get("held_for_gateway", []),
        "expiring": expiring(config),
        "daemon": load_report(paths.daemon) or None,
        "bundles": doc.get("bundles") or {"env_file": config.bundles.env_file},
    }


# A summary names this many rejections; a directory of junk must not flood a terminal.
MAX_PRINTED = 50


def summary(op: str, result: SyncResult, own: Sequence[FileVerdict] = ()) -> dict[str, Any]:
    """What `sync`, `add` and `remove` report, the same whether the daemon or the CLI did
    the work: the text, and the counts the CLI turns into an exit code."""
    own_sources = {v.source for v in own}
    others = [r for r in result.rejected if r.source not in own_sources]
    lines = []
    for verdict in own:
        for ca in verdict.accepted:
            lines.append(f"{verdict.source}: trusts {ca.subject} (sha256 {ca.sha256[:16]}…)")
    if op == "remove":
        for gone in result.removed:
            lines.append(
                f"removed {gone.subject} (sha256 {gone.sha256[:16]}…); its source file is left where it "
                "is and the CA stays removed; `edge-certd add FILE` trusts it again"
            )
    counts = f"{len(result.added)} added, {len(result.removed)} removed"
    lines.append(f"{plural(len(result.managed), 'CA')} trusted; {counts}")
    if op == "sync" or not own:
        for ca in result.added:
            lines.append(f"  installed {ca.subject} (sha256 {ca.sha256[:16]}…)")
        if op != "remove":
            for gone in result.removed:
                lines.append(f"  removed {gone.subject} (sha256 {gone.sha256[:16]}…)")
    # Folded files (sync/judging.py) are junk, never one of `own`: counted with the others.
    folded = result.folded.files
    if op == "sync":
        lines.extend(f"  {rej.describe()}" for rej in others[:MAX_PRINTED])
        if len(others) + folded > MAX_PRINTED:
            lines.append(
                f"  … and {plural(len(others) + folded - MAX_PRINTED, 'more rejection')}; "
                "`edge-certd status --json` counts them by reason"
            )
    elif others or folded:
        files = len({r.source for r in others}) + folded
        lines.append(
            f"  note: {plural(files, 'other file')} in the sources "
            f"{'is' if files == 1 else 'are'} rejected; `edge-certd status` lists "
            f"{'it' if files == 1 else 'them'}"
        )
    for hold in result.held_for_gateway:
        # A roots package upgrade's sync prints this into apt's output: the mistake is seen there.
        lines.append(
            f"  kept {hold.subject} (sha256 {hold.sha256[:16]}…): its source is gone, but gateway "
            f"{hold.gateway} still anchors at it; it stays until {iso(hold.until)} or until the "
            "gateway moves to another root (gateway.grace_days)"
        )
    for problem in result.source_problems:
        lines.append(f"  {problem.describe()}")
    for failure in result.target_failures:
        lines.append(f"  {failure.target} not updated (the rest is): {failure.message}")
    lines.extend(f"  note: {note.message}" for note in result.notes if note.code != "java_skipped")
    return {
        "text": "\n".join(lines),
        "rejected": result.rejected_count,
        "source_problems": len(result.source_problems),
        "target_failures": len(result.target_failures),
    }
