"""What `list` and `status` report, read from the state directory. Reads; writes nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from edge_certd.config import Config
from edge_certd.core.expiry import expiring as expiring_cas
from edge_certd.core.model import InstalledCA
from edge_certd.core.text import iso
from edge_certd.store.sources import package_name
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
        "ignored": doc.get("ignored", []),
        "ignored_total": doc.get("ignored_total", len(doc.get("ignored", []))),
        "source_errors": doc.get("source_errors", []),
        "target_failures": doc.get("target_failures", []),
        "expiring": expiring(config),
        "daemon": load_report(paths.daemon) or None,
        "bundles": doc.get("bundles") or {"env_file": config.bundles.env_file},
    }
