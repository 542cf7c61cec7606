"""edge-certd.prom for node_exporter's textfile collector, and the update-run counter.

The CLI and the daemon both sync, and the daemon also changes state between syncs, so the
file is always rendered from what both of them leave in the state directory: the manifest,
status.json, daemon.json and the `update-runs` counter. Whoever writes last writes the
whole truth, and no writer needs the other's memory.

The text is prometheus_client's (Debian's python3-prometheus-client): its writer escapes
label values as the exposition format requires. The file is replaced atomically (a temp
file whose name node_exporter ignores, then a rename), and only when its bytes change.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge_certd import __version__
from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.metrics import CAFact, Family, MetricsFacts, families
from edge_certd.core.text import parse_iso
from edge_certd.store.fsutil import (
    ensure_directory,
    read_bytes_quietly,
    remove_stale_temp_files,
    write_atomic,
)
from edge_certd.store.state import StatePaths, load_manifest, load_report

__all__ = [
    "RUNS_NAME",
    "TEXTFILE_NAME",
    "count_update_run",
    "gather",
    "render",
    "textfile_path",
    "write_metrics",
]

TEXTFILE_NAME = "edge-certd.prom"
# One decimal integer: runs of the update command, by the CLI and the daemon alike. Written
# only under the state lock, so two syncs never lose a count; it survives restarts, so
# edge_certd_update_runs_total is a true counter (it resets only when the state is purged).
RUNS_NAME = "update-runs"


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


def _time(doc: Mapping[str, Any], key: str) -> dt.datetime | None:
    value = doc.get(key)
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def _count(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def gather(config: Config) -> MetricsFacts:
    """Read what the metrics say from the state directory. Reads only; never raises."""
    paths = StatePaths(config.state_dir)
    status = load_report(paths.status)
    daemon = load_report(paths.daemon)
    last = status.get("last_sync") if isinstance(status.get("last_sync"), dict) else {}
    assert isinstance(last, dict)
    by_reason = status.get("rejected_files_by_reason")
    state = daemon.get("state")
    line = daemon.get("status_line")
    degraded = state == "degraded" or (
        state != "stopped" and isinstance(line, str) and line.startswith("degraded")
    )
    return MetricsFacts(
        version=__version__,
        cas=tuple(
            CAFact(sha256=e.sha256, subject=e.subject, not_after=e.not_after)
            for e in load_manifest(paths).entries.values()
        ),
        last_sync=_time(last, "time"),
        last_sync_ok=last.get("result") == "ok" if last else None,
        last_change=_time(status, "last_change"),
        rejected_files=_count(status.get("rejected_files_total")),
        rejected_files_by_reason=(
            {str(k): _count(v) for k, v in by_reason.items()} if isinstance(by_reason, dict) else {}
        ),
        source_errors=_count(status.get("source_errors")),
        target_failures=_count(status.get("target_failures")),
        judge_unavailable_files=_count(status.get("judge_unavailable_total")),
        degraded=degraded,
        expiry_checked=_time(daemon, "expiry_checked"),
        update_runs=read_update_runs(paths),
        max_ca_series=config.metrics.max_ca_series,
    )


class _Families:
    """A prometheus_client collector over families already computed."""

    def __init__(self, found: list[Family]) -> None:
        self._found = found

    def collect(self) -> Iterator[Metric]:
        for family in self._found:
            names = [name for name, _ in family.samples[0].labels] if family.samples else []
            metric: GaugeMetricFamily | CounterMetricFamily
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=names)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=names)
            for sample in family.samples:
                metric.add_metric([value for _, value in sample.labels], sample.value)
            yield metric


def render(facts: MetricsFacts) -> bytes:
    """The text exposition format (0.0.4) of every family."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(facts)))  # type: ignore[arg-type]
    return generate_latest(registry)


def write_metrics(config: Config) -> bool:
    """Rewrite edge-certd.prom from the state directory. True when the file changed.

    Never raises: metrics are for people far away, and a full disk or a missing directory
    must not fail a sync or stop the daemon. A file that stops changing is what the
    `EdgeCertdMetricsStale` alert (docs/alerts.yml) watches for.
    """
    path = textfile_path(config)
    if path is None:
        return False
    try:
        if config.metrics.textfile == "always":
            ensure_directory(config.metrics.textfile_dir)
        return write_atomic(path, render(gather(config)), 0o644)
    except EdgeCertdError:
        return False


def after_sync(config: Config, paths: StatePaths, *, update_ran: bool) -> None:
    """The sync's one call, under the state lock: count the update, then rewrite the file."""
    remove_stale_temp_files(paths.state_dir, (RUNS_NAME,))  # a crash mid-write; no writer now
    if update_ran:
        count_update_run(paths)
    write_metrics(config)
