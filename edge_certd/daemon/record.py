"""What the daemon leaves behind for people: daemon.json and edge-certd.prom.

`edge-certd status` and node_exporter cannot ask the daemon (status may run as anyone, and
node_exporter only reads files), so the daemon writes down its state each time it changes:
after each sync, request and expiry check, and when it stops. Only the daemon writes
daemon.json; the metrics file is the sync's too (`sync/metrics.py`).
"""

from __future__ import annotations

import datetime as dt
import os

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError
from edge_certd.core.model import SyncResult
from edge_certd.core.text import iso
from edge_certd.daemon.gateway import GatewayWatch
from edge_certd.store.state import StatePaths, save_report
from edge_certd.sync import metrics


def record_daemon(
    config: Config,
    *,
    state: str,
    status_line: str,
    degraded: str | None,
    expiry_checked: dt.datetime | None,
    gateway: GatewayWatch,
    result: SyncResult | None,
) -> None:
    """Write daemon.json and edge-certd.prom (from `result`, the newest sync's). Never
    raises: both are for people, and a full disk must not stop the service."""
    try:
        save_report(
            StatePaths(config.state_dir).daemon,
            {
                "pid": os.getpid(),
                "state": state,
                "status_line": status_line,
                "degraded": degraded,
                "updated": iso(dt.datetime.now(dt.UTC)),
                "expiry_checked": iso(expiry_checked) if expiry_checked else None,
                "gateway": gateway.record(),
                "gateway_status": gateway.status(dt.datetime.now(dt.UTC)),
            },
        )
    except EdgeCertdError:
        pass  # daemon.json is for people; a full disk must not stop the service
    metrics.write_metrics(  # never raises
        config,
        result,
        metrics.daemon_state(state, status_line, expiry_checked, gateway.probes),
    )
