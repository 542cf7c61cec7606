"""edge-certd.prom for node_exporter's textfile collector, and the update-run counter. The one
module that imports prometheus_client.

The metrics are prometheus_client's own families, built by `families` (pure) from what a sync
returned (`SyncResult`) and the daemon's state; `write_metrics` renders them with
prometheus_client's writer, which escapes label values as the exposition format requires. A
sync writes the file under the state lock; the daemon writes it again with its own state
after each sync and expiry check. A sync outside the daemon takes the daemon's state from
daemon.json, so it does not clear a degraded daemon's flag.

Names follow node_exporter's textfile conventions: `edge_certd_<what>_<unit>`, gauges for
states, `_total` for the one counter, `_timestamp_seconds` for times. Cardinality is bounded
by construction: the only labels are a CA's fingerprint and subject (at most
`metrics.max_ca_series` CAs, soonest to expire first; the fingerprint alone for the latest to
expire, as many), a `Reason` code (a closed set) and the
version. No label ever names a file.

The file is replaced atomically (a temp file whose name node_exporter ignores, then a rename),
and only when its bytes change.

prometheus_client is imported where the families are built, not with this module: with no
textfile directory nothing here needs it, and it is about 2.5 MB of the idle daemon's memory
(issue 24).
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_certd import __version__
from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.gateway import GatewayState, Probe, probes_from_record
from edge_certd.core.model import SyncResult
from edge_certd.core.text import parse_iso, printable
from edge_certd.store.fsutil import (
    ensure_directory,
    read_bytes_quietly,
    remove_stale_temp_files,
    write_atomic,
)
from edge_certd.store.state import StatePaths, load_report

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = [
    "MAX_LABEL",
    "RUNS_NAME",
    "TEXTFILE_NAME",
    "DaemonState",
    "after_sync",
    "count_update_run",
    "daemon_state",
    "families",
    "label_value",
    "newest",
    "render",
    "textfile_path",
    "write_metrics",
]

TEXTFILE_NAME = "edge-certd.prom"
# One decimal integer: runs of the update command, by the CLI and the daemon alike. Written
# only under the state lock, so two syncs never lose a count; it survives restarts, so
# edge_certd_update_runs_total is a true counter (it resets only when the state is purged).
RUNS_NAME = "update-runs"
# A subject is copied from a certificate anyone could have dropped: cut it so one hostile CA
# cannot make a label kilobytes long. 128 characters hold every real gateway root's DN.
MAX_LABEL = 128


@dataclass(frozen=True, kw_only=True)
class DaemonState:
    """What the metrics say about the daemon: `degraded` is its own word (STATUS=)."""

    degraded: bool = False
    expiry_checked: dt.datetime | None = None
    gateway: tuple[Probe, ...] = ()  # the gateway watch's last probe of each endpoint


def daemon_state(
    state: object, status_line: object, expiry_checked: dt.datetime | None, gateway: tuple[Probe, ...] = ()
) -> DaemonState:
    """The daemon's state from what it records: degraded while it says so, never once stopped."""
    degraded = state == "degraded" or (
        state != "stopped" and isinstance(status_line, str) and status_line.startswith("degraded")
    )
    return DaemonState(degraded=degraded, expiry_checked=expiry_checked, gateway=gateway)


def newest(*results: SyncResult | None) -> SyncResult | None:
    """The latest of the results given (None when there is none)."""
    found = [r for r in results if r is not None]
    return max(found, key=lambda r: r.time) if found else None


def label_value(text: str, limit: int = MAX_LABEL) -> str:
    """A label value safe to expose: control characters escaped, cut to `limit`.

    The exposition format's own escaping (backslash, double quote, newline) is the
    writer's job; this only bounds what a certificate can put there.
    """
    return printable(text, limit)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, help_text, value=float(value))


def families(
    result: SyncResult | None,
    daemon: DaemonState,
    *,
    update_runs: int,
    max_ca_series: int,
    version: str = __version__,
) -> list[Metric]:
    """Every family, in a fixed order, so an unchanged state renders unchanged bytes. Pure.

    `result` is the last sync's (None before the first one): on a failed sync, its
    `managed` is what stayed installed.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    managed = list(result.managed.values()) if result else []
    cas = sorted(managed, key=lambda c: (c.not_after, c.sha256))[:max_ca_series]
    # Files, not rejections: one bundle of 1,000 leaves is one file.
    by_reason = Counter(
        code for v in (result.verdicts if result else ()) for code in {str(r.code) for r in v.rejected}
    )
    if result:
        by_reason.update(result.folded.by_reason)
    info = GaugeMetricFamily(
        "edge_certd_info",
        "Always 1; the version label is the edge-certd that wrote this file.",
        labels=["version"],
    )
    info.add_metric([label_value(version)], 1.0)
    not_after = GaugeMetricFamily(
        "edge_certd_ca_not_after_timestamp_seconds",
        "notAfter of each managed CA, as a Unix time (the soonest to expire first, "
        f"at most {max_ca_series}).",
        labels=["sha256", "subject"],
    )
    for ca in cas:
        not_after.add_metric([ca.sha256, label_value(ca.subject)], ca.not_after.timestamp())
    # The fleet's readiness view (docs/ROTATION.md): which roots each device trusts. No subject,
    # so it stays one short series per root at 10,000 devices; under the cap the latest to
    # expire win, because a rotation's new root is the one the fleet is waiting for.
    newest = sorted(managed, key=lambda c: (c.not_after, c.sha256), reverse=True)[:max_ca_series]
    trusted = GaugeMetricFamily(
        "edge_certd_ca_trusted",
        f"1 for each CA edge-certd manages and the system store trusts (the latest to expire first, "
        f"at most {max_ca_series}).",
        labels=["sha256"],
    )
    for ca in sorted(newest, key=lambda c: c.sha256):
        trusted.add_metric([ca.sha256], 1.0)
    reasons = GaugeMetricFamily(
        "edge_certd_rejected_files_by_reason",
        "Source files the last sync refused, by reason code (a file may count under several).",
        labels=["reason"],
    )
    for code in sorted(by_reason):
        reasons.add_metric([code], float(by_reason[code]))
    out: list[Metric] = [
        info,
        _gauge("edge_certd_trusted_cas", "CAs edge-certd manages and the system store trusts.", len(managed)),
        not_after,
        trusted,
        _gauge(
            "edge_certd_ca_series_omitted",
            "Managed CAs left out of edge_certd_ca_not_after_timestamp_seconds by metrics.max_ca_series.",
            len(managed) - len(cas),
        ),
        _gauge(
            "edge_certd_rejected_files",
            "Source files the last sync refused, whole or in part.",
            result.rejected_files if result else 0,
        ),
        reasons,
        _gauge(
            "edge_certd_source_errors",
            "Source directories the last sync could not read safely (what they gave is kept).",
            len(result.source_problems) if result else 0,
        ),
        _gauge(
            "edge_certd_target_failures",
            "Trust targets (bundles, Java, env file) the last sync could not write.",
            len(result.target_failures) if result else 0,
        ),
        _gauge(
            "edge_certd_judge_unavailable_files",
            "Source files the last sync could not judge, not by their fault (held as they were, retried).",
            len(result.judge_unavailable) if result else 0,
        ),
        _gauge(
            "edge_certd_degraded",
            "1 while the daemon reports itself degraded (STATUS= starts with degraded).",
            1 if daemon.degraded else 0,
        ),
        CounterMetricFamily(
            "edge_certd_update_runs",
            "Runs of trust_store.update_command (update-ca-certificates), successful or not.",
            value=float(update_runs),
        ),
    ]
    if result is not None:
        ok = result.error is None and not result.target_failures
        out.append(
            _gauge(
                "edge_certd_last_sync_timestamp_seconds",
                "When the last sync (CLI or daemon) ran, as a Unix time.",
                result.time.timestamp(),
            )
        )
        out.append(
            _gauge(
                "edge_certd_last_sync_success",
                "1 when the last sync applied everything, 0 when it failed or a target was not written.",
                1 if ok else 0,
            )
        )
        if result.last_change is not None:
            out.append(
                _gauge(
                    "edge_certd_last_change_timestamp_seconds",
                    "When trust last changed (a CA added or removed), as a Unix time.",
                    result.last_change.time.timestamp(),
                )
            )
    if result is not None and result.held_for_gateway:
        out.append(held_family(result))
    if daemon.expiry_checked is not None:
        out.append(
            _gauge(
                "edge_certd_last_expiry_check_timestamp_seconds",
                "When the daemon last checked the managed CAs for expiry, as a Unix time.",
                daemon.expiry_checked.timestamp(),
            )
        )
    if daemon.gateway:
        out.extend(gateway_families(daemon.gateway))
    return out


def held_family(result: SyncResult) -> Metric:
    """One series per root kept after its source went away because the gateway still anchors
    at it (core/hold.py): its value is when the hold ends. No series when nothing is held."""
    from prometheus_client.core import GaugeMetricFamily

    held = GaugeMetricFamily(
        "edge_certd_ca_held_for_gateway",
        "Unix time at which the hold on a root ends: its source is gone, but the gateway's last "
        "probe still anchors at it (gateway.grace_days).",
        labels=["sha256"],
    )
    for hold in sorted(result.held_for_gateway, key=lambda h: h.sha256):
        held.add_metric([hold.sha256], hold.until.timestamp())
    return held


def gateway_families(probes: Sequence[Probe]) -> list[Metric]:
    """The gateway watch's families. Labels stay bounded: one `gateway` per configured
    endpoint, one `store` per trust store, one `position`/`sha256` per presented certificate."""
    from prometheus_client.core import GaugeMetricFamily

    up = GaugeMetricFamily(
        "edge_certd_gateway_up",
        "1 when a runtime reading this store would connect to the gateway (the store trusts the "
        "chain and the certificate names the host); absent while the gateway is unreachable.",
        labels=["gateway", "store"],
    )
    reachable = GaugeMetricFamily(
        "edge_certd_gateway_reachable",
        "1 when the last probe completed a TLS handshake with the gateway.",
        labels=["gateway"],
    )
    not_after = GaugeMetricFamily(
        "edge_certd_gateway_cert_not_after_timestamp_seconds",
        "notAfter of each certificate the gateway presents (its own: server certificate at "
        "position 0, Edge CA and intermediates above), as a Unix time.",
        labels=["gateway", "position", "sha256"],
    )
    anchor = GaugeMetricFamily(
        "edge_certd_gateway_anchor_info",
        "Always 1; sha256 is the installed root the gateway's chain anchors at.",
        labels=["gateway", "sha256"],
    )
    last = GaugeMetricFamily(
        "edge_certd_gateway_last_probe_timestamp_seconds",
        "When the gateway watch last checked the gateway, as a Unix time.",
        labels=["gateway"],
    )
    test_only = GaugeMetricFamily(
        "edge_certd_gateway_test_only_ca",
        "1 when the gateway's chain ends in a test-only CA (IoT Edge's quickstart CA, certGen.sh's).",
        labels=["gateway"],
    )
    for probe in probes:
        gw = label_value(probe.gateway)
        reached = probe.state in (GatewayState.TRUSTED, GatewayState.UNTRUSTED)
        reachable.add_metric([gw], 1.0 if reached else 0.0)
        last.add_metric([gw], probe.checked_at.timestamp())
        test_only.add_metric([gw], 1.0 if probe.test_only else 0.0)
        if not reached:
            continue
        for store in probe.stores:
            up.add_metric([gw, label_value(store.store)], 1.0 if probe.store_up(store) else 0.0)
        for cert in probe.own_certificates:
            not_after.add_metric([gw, str(cert.position), cert.sha256], cert.not_after.timestamp())
        if probe.anchor:
            anchor.add_metric([gw, probe.anchor], 1.0)
    return [up, reachable, not_after, anchor, last, test_only]


class _Collected:
    """A prometheus_client collector over families already built."""

    def __init__(self, found: Sequence[Metric]) -> None:
        self._found = found

    def collect(self) -> Iterator[Metric]:
        return iter(self._found)


def render(found: Sequence[Metric]) -> bytes:
    """The text exposition format (0.0.4) of `found`."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(found))  # type: ignore[arg-type]
    return generate_latest(registry)


def textfile_path(config: Config) -> str | None:
    """Where edge-certd.prom goes, or None when metrics are off (or `auto` finds no directory)."""
    metrics = config.metrics
    if metrics.textfile == "never":
        return None
    if metrics.textfile == "auto" and not os.path.isdir(metrics.textfile_dir):
        return None
    return os.path.join(metrics.textfile_dir, TEXTFILE_NAME)


def read_update_runs(paths: StatePaths) -> int:
    raw = read_bytes_quietly(os.path.join(paths.state_dir, RUNS_NAME))
    try:
        return max(0, int(raw or b"0"))
    except ValueError:
        return 0  # a torn or edited file: start again (Prometheus handles a counter reset)


def count_update_run(paths: StatePaths) -> None:
    """Add one run. Call it under the state lock. A full disk loses the count, nothing more."""
    try:
        write_atomic(os.path.join(paths.state_dir, RUNS_NAME), b"%d\n" % (read_update_runs(paths) + 1))
    except EdgeCertdError:
        pass


def _daemon_state_on_disk(paths: StatePaths) -> DaemonState:
    """The daemon's state as it last recorded it (daemon.json), for a sync outside it."""
    doc = load_report(paths.daemon)
    checked = doc.get("expiry_checked")
    try:
        expiry_checked = parse_iso(checked) if isinstance(checked, str) else None
    except ValueError:
        expiry_checked = None
    return daemon_state(doc.get("state"), doc.get("status_line"), expiry_checked, probes_from_record(doc))


def write_metrics(config: Config, result: SyncResult | None, daemon: DaemonState | None = None) -> bool:
    """Rewrite edge-certd.prom from the last sync's result and the daemon's state (None: as
    daemon.json says). True when the file changed.

    Never raises: metrics are for people far away, and a full disk or a missing directory
    must not fail a sync or stop the daemon. A file that stops changing is what the
    `EdgeCertdMetricsStale` alert (docs/alerts.yml) watches for.
    """
    path = textfile_path(config)
    if path is None:
        return False
    paths = StatePaths(config.state_dir)
    found = families(
        result,
        daemon if daemon is not None else _daemon_state_on_disk(paths),
        update_runs=read_update_runs(paths),
        max_ca_series=config.metrics.max_ca_series,
    )
    try:
        if config.metrics.textfile == "always":
            ensure_directory(config.metrics.textfile_dir)
        return write_atomic(path, render(found), 0o644)
    except EdgeCertdError:
        return False


def after_sync(config: Config, paths: StatePaths, result: SyncResult, *, update_ran: bool) -> None:
    """The sync's one call, under the state lock: count the update, then rewrite the file."""
    remove_stale_temp_files(paths.state_dir, (RUNS_NAME,))  # a crash mid-write; no writer now
    if update_ran:
        count_update_run(paths)
    write_metrics(config, result)
