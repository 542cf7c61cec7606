"""The grace hold's side effects: the gateway's last probe read back, the running holds kept
in the state directory (gateway-holds.json, written atomically under the state lock), and
the journal's word when a hold begins or ends. The decision itself is core/hold.py's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.gateway import Probe, ResultError, result_from_json
from edge_certd.core.hold import MAX_HOLDS, HoldDecision, HoldRecord, Release, started_message
from edge_certd.core.text import iso, parse_iso, printable
from edge_certd.core.wire import json_nests_deeper
from edge_certd.store.fsutil import ReadError, read_bounded, write_atomic
from edge_certd.sync import journal as events

HOLDS_NAME = "gateway-holds.json"
HOLDS_VERSION = 1
MAX_RESULT_BYTES = 256 * 1024  # as the daemon reads it (daemon/gateway.py)
MAX_HOLDS_BYTES = 64 * 1024


def last_probes(config: Config) -> tuple[Probe, ...]:
    """The gateway watch's last result, read as the daemon reads it: bounded, no link, strict.
    () when no gateway is configured or the result is missing or not what the probe writes
    (then nothing new is held; a running hold lasts until its end)."""
    gateway = config.gateway
    if not (gateway.host or gateway.connection_string_file):
        return ()
    try:
        data = read_bounded(gateway.result_file, MAX_RESULT_BYTES)
        if json_nests_deeper(data, 8):
            return ()
        doc = json.loads(data)
        return result_from_json(doc) if isinstance(doc, dict) else ()
    except (ReadError, ResultError, ValueError, OSError, EdgeCertdError):
        return ()


def holds_path(config: Config) -> str:
    return os.path.join(config.state_dir, HOLDS_NAME)


def load_records(config: Config) -> dict[str, HoldRecord]:
    """The running holds; {} when there are none or the file is not one edge-certd wrote (a
    lost record ends its hold at this sync: the safe side, since a hold only keeps trust)."""
    try:
        data = read_bounded(holds_path(config), MAX_HOLDS_BYTES)
        if json_nests_deeper(data, 8):
            return {}
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != HOLDS_VERSION:
            return {}
        records = [_record_from_json(item) for item in doc["holds"][:MAX_HOLDS]]
    except (ReadError, ValueError, TypeError, KeyError, AttributeError, OSError):
        return {}
    return {r.sha256: r for r in records}


def save_records(config: Config, records: Sequence[HoldRecord]) -> None:
    """Only on change; no file when nothing is held. Raises WriteError (the sync's failure)."""
    path = holds_path(config)
    if not records:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    doc = {"version": HOLDS_VERSION, "holds": [_record_to_json(r) for r in records]}
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)


def log_decision(decision: HoldDecision, kept: Collection[str]) -> None:
    """One journal line when a hold begins and one when it ends; a running hold says nothing.
    `kept`: the holds the sync could read back from ca_dir, so actually kept."""
    for hold in (h for h in decision.started if h.sha256 in kept):
        events.emit(
            "ca_held_for_gateway",
            started_message(hold),
            logging.WARNING,
            sha256=hold.sha256,
            subject=hold.subject,
            gateway=hold.gateway,
            reason="gateway_anchor",
            extra={"HOLD_UNTIL": iso(hold.until)},
        )
    for ended in decision.ended:
        # A grace that ran out while the gateway may still need the root is worth a warning.
        level = logging.WARNING if ended.reason is Release.GRACE_ENDED else logging.INFO
        events.emit(
            "ca_hold_released",
            ended.message,
            level,
            sha256=ended.record.sha256,
            subject=ended.record.subject,
            gateway=ended.record.gateway,
            reason=str(ended.reason),
        )


def _record_to_json(record: HoldRecord) -> dict[str, Any]:
    return {
        "sha256": record.sha256,
        "subject": record.subject,
        "gateway": record.gateway,
        "since": iso(record.since),
        "sources": list(record.sources),
    }


def _record_from_json(item: Mapping[str, Any]) -> HoldRecord:
    sha = item["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("not a fingerprint")
    since = parse_iso(str(item["since"])[:40])
    if since.tzinfo is None:
        raise ValueError("no time zone")
    return HoldRecord(
        sha256=sha,
        subject=printable(str(item["subject"])),
        gateway=printable(str(item["gateway"]), 120),
        since=since,
        sources=tuple(printable(str(s)) for s in item["sources"][:16]),
    )
