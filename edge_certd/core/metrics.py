"""What edge-certd tells Prometheus, as plain values. Pure: no disk, no clock.

`families(facts)` turns one `MetricsFacts` (read from the state directory by
`sync/metrics.py`) into metric families; the exposition text itself is written by
prometheus_client there. Names follow node_exporter's textfile conventions:
`edge_certd_<what>_<unit>`, gauges for states, `_total` for the one counter,
`_timestamp_seconds` for times.

Cardinality is bounded by construction: the only labels are a CA's fingerprint and subject
(at most `max_ca_series` CAs, soonest to expire first), a `Reason` code (a closed set) and
the version. No label ever names a file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge_certd.core.model import Reason
from edge_certd.core.text import printable

# A subject is copied from a certificate anyone could have dropped: cut it so one hostile CA
# cannot make a label kilobytes long. 128 characters hold every real gateway root's DN.
MAX_LABEL = 128
# A reason code that is not one of ours (a status.json from another version) is counted here.
OTHER_REASON = "other"

__all__ = ["MAX_LABEL", "CAFact", "Family", "MetricsFacts", "Sample", "families", "label_value"]


@dataclass(frozen=True, kw_only=True)
class CAFact:
    sha256: str
    subject: str
    not_after: dt.datetime


@dataclass(frozen=True, kw_only=True)
class MetricsFacts:
    """Everything the metrics say, gathered from the state directory.

    `last_sync_ok` is None before the first sync; `degraded` is the daemon's own word
    (daemon.json), so a CLI sync does not clear a degraded daemon's flag.
    """

    version: str
    cas: Sequence[CAFact] = ()
    last_sync: dt.datetime | None = None
    last_sync_ok: bool | None = None
    last_change: dt.datetime | None = None
    rejected_files: int = 0
    rejected_files_by_reason: Mapping[str, int] = field(default_factory=dict)
    source_errors: int = 0
    target_failures: int = 0
    judge_unavailable_files: int = 0
    degraded: bool = False
    expiry_checked: dt.datetime | None = None
    update_runs: int = 0
    max_ca_series: int = 100


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    """One metric: `kind` is "gauge" or "counter" (whose name carries no `_total` here)."""

    name: str
    kind: str
    help: str
    samples: tuple[Sample, ...]


def label_value(text: str, limit: int = MAX_LABEL) -> str:
    """A label value safe to expose: control characters escaped, cut to `limit`.

    The exposition format's own escaping (backslash, double quote, newline) is the
    writer's job; this only bounds what a certificate can put there.
    """
    return printable(text, limit)


def _stamp(moment: dt.datetime) -> float:
    return moment.timestamp()


def _one(name: str, help_text: str, value: float, kind: str = "gauge") -> Family:
    return Family(name, kind, help_text, (Sample((), float(value)),))


def families(facts: MetricsFacts) -> list[Family]:
    """Every family, in a fixed order, so an unchanged state renders unchanged bytes."""
    cas = sorted(facts.cas, key=lambda c: (c.not_after, c.sha256))[: facts.max_ca_series]
    known = {str(r) for r in Reason}
    by_reason: dict[str, int] = {}
    for code, count in facts.rejected_files_by_reason.items():
        key = code if code in known else OTHER_REASON
        by_reason[key] = by_reason.get(key, 0) + int(count)
    out = [
        Family(
            "edge_certd_info",
            "gauge",
            "Always 1; the version label is the edge-certd that wrote this file.",
            (Sample((("version", label_value(facts.version)),), 1.0),),
        ),
        _one("edge_certd_trusted_cas", "CAs edge-certd manages and the system store trusts.", len(facts.cas)),
        Family(
            "edge_certd_ca_not_after_timestamp_seconds",
            "gauge",
            "notAfter of each managed CA, as a Unix time (the soonest to expire first, "
            f"at most {facts.max_ca_series}).",
            tuple(
                Sample((("sha256", c.sha256), ("subject", label_value(c.subject))), _stamp(c.not_after))
                for c in cas
            ),
        ),
        _one(
            "edge_certd_ca_series_omitted",
            "Managed CAs left out of edge_certd_ca_not_after_timestamp_seconds by metrics.max_ca_series.",
            len(facts.cas) - len(cas),
        ),
        _one(
            "edge_certd_rejected_files",
            "Source files the last sync refused, whole or in part.",
            facts.rejected_files,
        ),
        Family(
            "edge_certd_rejected_files_by_reason",
            "gauge",
            "Source files the last sync refused, by reason code (a file may count under several).",
            tuple(Sample((("reason", code),), float(by_reason[code])) for code in sorted(by_reason)),
        ),
        _one(
            "edge_certd_source_errors",
            "Source directories the last sync could not read safely (what they gave is kept).",
            facts.source_errors,
        ),
        _one(
            "edge_certd_target_failures",
            "Trust targets (bundles, Java, env file) the last sync could not write.",
            facts.target_failures,
        ),
        _one(
            "edge_certd_judge_unavailable_files",
            "Source files the last sync could not judge, not by their fault (held as they were, retried).",
            facts.judge_unavailable_files,
        ),
        _one(
            "edge_certd_degraded",
            "1 while the daemon reports itself degraded (STATUS= starts with degraded).",
            1 if facts.degraded else 0,
        ),
        _one(
            "edge_certd_update_runs",
            "Runs of trust_store.update_command (update-ca-certificates), successful or not.",
            facts.update_runs,
            kind="counter",
        ),
    ]
    if facts.last_sync is not None:
        out.append(
            _one(
                "edge_certd_last_sync_timestamp_seconds",
                "When the last sync (CLI or daemon) ran, as a Unix time.",
                _stamp(facts.last_sync),
            )
        )
        out.append(
            _one(
                "edge_certd_last_sync_success",
                "1 when the last sync applied everything, 0 when it failed or a target was not written.",
                1 if facts.last_sync_ok else 0,
            )
        )
    if facts.last_change is not None:
        out.append(
            _one(
                "edge_certd_last_change_timestamp_seconds",
                "When trust last changed (a CA added or removed), as a Unix time.",
                _stamp(facts.last_change),
            )
        )
    if facts.expiry_checked is not None:
        out.append(
            _one(
                "edge_certd_last_expiry_check_timestamp_seconds",
                "When the daemon last checked the managed CAs for expiry, as a Unix time.",
                _stamp(facts.expiry_checked),
            )
        )
    return out
