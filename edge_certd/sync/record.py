"""status.json: the report of the last sync, for `edge-certd status` whether or not the
daemon runs. Output only: nothing reads it to decide anything. Written under the state lock."""

from __future__ import annotations

from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.model import SyncResult
from edge_certd.core.text import iso
from edge_certd.store.state import StatePaths, save_report
from edge_certd.targets.registry import bundle_paths


def status_document(result: SyncResult, config: Config) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "last_sync": {
            "time": iso(result.time),
            "result": "failed" if result.error else "ok",
            "error": result.error,
            "added": len(result.added),
            "removed": len(result.removed),
            "update": result.update_summary,
        },
        "rejected": [
            {"source": r.source, "code": r.code, "message": r.message, "subject": r.subject,
             "sha256": r.sha256, "content_sha256": v.content_sha256, "format": v.format}
            for v in result.verdicts for r in v.rejected
        ],
        "ignored": [{"source": i.source, "what": i.what, "format": v.format}
                    for v in result.verdicts for i in v.ignored],
        "source_errors": [{"path": p.path, "reason": p.reason} for p in result.source_problems],
        "bundles": bundle_paths(config),
    }
    if result.last_change is not None:
        doc["last_change"] = iso(result.last_change.time)
        doc["last_change_counts"] = [result.last_change.added, result.last_change.removed]
    return doc


def write_status(paths: StatePaths, result: SyncResult, config: Config) -> None:
    try:
        save_report(paths.status, status_document(result, config))
    except EdgeCertdError:
        pass  # a full disk must not turn a good sync into a failed one
