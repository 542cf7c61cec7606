"""status.json: the report of the last sync, for `edge-certd status` whether or not the
daemon runs. Output only: nothing reads it to decide anything. Written under the state lock."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.model import SyncResult
from edge_certd.core.text import iso
from edge_certd.store.state import StatePaths, load_blocked, save_report
from edge_certd.targets.registry import bundle_paths

# status.json lists this many rejected and ignored items and counts the rest: 50,000 junk
# files must not make an 18 MB file that is rewritten on every sync.
MAX_LISTED = 200
MAX_PER_FILE = 5


def status_document(
    result: SyncResult, config: Config, blocked: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """status.json. `blocked`: the SHA-256s an operator removed (removed-by-operator.json);
    those a source still holds are listed, for doctor and verify to name in their advice."""
    # Iterated, not copied: with 50,000 junk files the verdicts are most of the memory.
    # Every rejected file is named (up to MAX_LISTED files), with at most MAX_PER_FILE of its
    # rejections: one bundle of 1,000 leaves must not hide the other files.
    rejected = (
        (v, r)
        for v in islice((v for v in result.verdicts if v.rejected), MAX_LISTED)
        for r in v.rejected[:MAX_PER_FILE]
    )
    ignored = ((v, i) for v in result.verdicts for i in v.ignored)
    by_reason = Counter(str(r.code) for v in result.verdicts for r in v.rejected)
    # Files, not rejections: one bundle of 1,000 leaves is one file (the metrics count this).
    files_by_reason = Counter(code for v in result.verdicts for code in {str(r.code) for r in v.rejected})
    by_reason.update(result.folded.by_reason)  # one rejection per folded file
    files_by_reason.update(result.folded.by_reason)
    ignored_total = sum(len(v.ignored) for v in result.verdicts)
    doc: dict[str, Any] = {
        "last_sync": {
            "time": iso(result.time),
            "result": "failed" if result.error else ("partial" if result.target_failures else "ok"),
            "error": result.error,
            "added": len(result.added),
            "removed": len(result.removed),
            "update": result.update_summary,
        },
        "rejected": [
            {
                "source": r.source,
                "code": r.code,
                "message": r.message,
                "subject": r.subject,
                "sha256": r.sha256,
                "content_sha256": v.content_sha256,
                "format": v.format,
            }
            for v, r in rejected
        ],
        "rejected_total": sum(by_reason.values()),
        "rejected_files_total": result.rejected_files,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejected_files_by_reason": dict(sorted(files_by_reason.items())),
        "ignored": [
            {"source": i.source, "what": i.what, "format": v.format} for v, i in islice(ignored, MAX_LISTED)
        ],
        "ignored_total": ignored_total,
        "source_errors": [{"path": p.path, "reason": p.reason} for p in result.source_problems],
        "notes": [
            {"code": n.code, "message": n.message}
            for n in result.notes[:MAX_LISTED]
            if n.code != "java_skipped"
        ],
        "target_failures": [{"target": f.target, "message": f.message} for f in result.target_failures],
        # Files the judge could not judge (not their fault): held as they were, judged again.
        "judge_unavailable": list(result.judge_unavailable[:MAX_LISTED]),
        "judge_unavailable_total": len(result.judge_unavailable),
        "bundles": bundle_paths(config),
        "removed_by_operator": _stay_removed(result, blocked),
        # Roots kept after their source went away, while the gateway still anchors at them.
        "held_for_gateway": [
            {
                "sha256": h.sha256,
                "subject": h.subject,
                "gateway": h.gateway,
                "since": iso(h.since),
                "until": iso(h.until),
                "sources": list(h.sources),
            }
            for h in result.held_for_gateway
        ],
    }
    if result.last_change is not None:
        doc["last_change"] = iso(result.last_change.time)
        doc["last_change_counts"] = [result.last_change.added, result.last_change.removed]
    return doc


def _stay_removed(result: SyncResult, blocked: frozenset[str]) -> list[dict[str, Any]]:
    """CAs a source still provides that stay removed because an operator removed them."""
    found: dict[str, dict[str, Any]] = {}
    for verdict in result.verdicts:
        for ca in verdict.accepted:
            if ca.sha256 in blocked:
                entry = found.setdefault(
                    ca.sha256, {"sha256": ca.sha256, "subject": ca.subject, "sources": []}
                )
                if len(entry["sources"]) < MAX_PER_FILE:
                    entry["sources"].append(verdict.source)
    return [found[sha] for sha in sorted(found)][:MAX_LISTED]


def write_status(paths: StatePaths, result: SyncResult, config: Config) -> None:
    try:
        save_report(paths.status, status_document(result, config, load_blocked(paths)))
    except EdgeCertdError:
        pass  # a full disk must not turn a good sync into a failed one
