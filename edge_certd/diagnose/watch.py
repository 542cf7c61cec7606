"""The gateway watch's probe: `edge-certd probe`, run by edge-certd-probe.service (no
privilege at all: a dynamic user, no capabilities, network, nothing writable but its result).

It reads the plan the daemon wrote (which gateway endpoints, which stores; the daemon resolves
a connection string file, which this unit may not read), runs `verify`'s steps for each
endpoint, and writes one result file. The daemon reads that file back strictly
(`core/gateway.result_from_json`) and turns it into journal events, STATUS= and metrics.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.core.gateway import (
    GatewayState,
    PresentedCert,
    Probe,
    StoreVerdict,
    find_test_only_ca,
    result_to_json,
)
from edge_certd.core.text import printable
from edge_certd.diagnose.verify.model import PROTOCOL_PORTS, TrustStore, VerifyReport, VerifyRequest
from edge_certd.diagnose.verify.request import default_stores, request_for_config
from edge_certd.store.fsutil import write_atomic

PLAN_SCHEMA_VERSION = 1
PLAN_NAME = "gateway-plan.json"
MAX_PLAN_BYTES = 64 * 1024
# Steps whose failure means the gateway was not reached: no chain to judge.
_REACH_STEPS = ("connection_string", "dns", "tcp", "tls")


def plan_for_config(config: Config) -> dict[str, Any] | None:
    """What the probe checks, for the daemon to write where the probe can read it; None when
    no gateway is configured.

    Raises:
        EdgeCertdError: the gateway section names a connection string that can't be read.
    """
    gateway = config.gateway
    if not gateway.host and not gateway.connection_string_file:
        return None
    endpoints = []
    for protocol in gateway.protocols or ["mqtts"]:
        request = request_for_config(config, protocol=protocol if len(gateway.protocols) > 1 else None)
        endpoints.append(
            {
                "host": request.host,
                "port": request.port,
                "protocol": request.protocol,
                "servername": request.servername,
            }
        )
    return {
        "schema_version": PLAN_SCHEMA_VERSION,
        "timeout": gateway.timeout,
        "warn_days": max(config.expiry.warn_days, default=30),
        "endpoints": endpoints,
        # The Java truststore's password guards its integrity, not a secret: the env file
        # that every runtime reads carries it too.
        "stores": [_store_to_json(store) for store in default_stores(config)],
    }


def requests_from_plan(doc: Mapping[str, Any]) -> list[VerifyRequest]:
    """The plan's endpoints as verify requests.

    Raises:
        UsageError: not a plan edge-certd writes.
    """
    try:
        if doc["schema_version"] != PLAN_SCHEMA_VERSION:
            raise UsageError(f"the gateway plan's schema_version is not {PLAN_SCHEMA_VERSION}")
        stores = tuple(_store_from_json(item) for item in doc["stores"])
        timeout = float(doc["timeout"])
        warn_days = int(doc["warn_days"])
        requests = []
        for item in doc["endpoints"]:
            protocol = str(item["protocol"])
            if protocol not in PROTOCOL_PORTS:
                raise UsageError(f"the gateway plan names an unknown protocol {printable(protocol, 20)!r}")
            requests.append(
                VerifyRequest(
                    host=None if item["host"] is None else str(item["host"]),
                    port=int(item["port"]),
                    protocol=protocol,
                    servername=None if item["servername"] is None else str(item["servername"]),
                    stores=stores,
                    timeout=timeout,
                    warn_days=warn_days,
                )
            )
        return requests
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the gateway plan is malformed ({type(exc).__name__})") from None


def run_probe(
    requests: Sequence[VerifyRequest], output: str, *, now: dt.datetime | None = None
) -> list[Probe]:
    """Probe every endpoint and write the result file (atomically, only on change).

    Raises:
        WriteError: the result cannot be written.
    """
    # Lazy: the daemon never loads cryptography (docs/ARCHITECTURE.md, test_daemon_footprint).
    from edge_certd.diagnose.verify.check import verify_gateway

    probes = [probe_from_report(verify_gateway(request)) for request in requests]
    doc = result_to_json(probes, now or dt.datetime.now(dt.UTC))
    write_atomic(output, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode(), mode=0o644)
    return probes


def probe_from_report(report: VerifyReport) -> Probe:
    """What the daemon needs of one `verify` report."""
    label = printable(f"{report.host or '?'}:{report.port}", 120)
    diagnosis = report.diagnosis
    stores = tuple(
        StoreVerdict(
            store=store.key,
            trusted=check.verified,
            anchor_sha256=check.anchor_sha256,
            problem=None if check.verified else (check.problem or check.error_text or "not trusted"),
        )
        for store, check in report.stores
    )
    chain = tuple(
        PresentedCert(
            position=position,
            subject=info.subject,
            common_name=info.common_name,
            sha256=info.sha256,
            not_after=info.not_after,
            self_signed=info.self_signed,
            is_ca=info.is_ca,
        )
        for position, info in enumerate(report.chain[:10])
    )
    if report.host is None:
        state = GatewayState.UNKNOWN
    elif any(s.name in _REACH_STEPS and s.status == "fail" for s in report.steps) or not report.chain:
        state = GatewayState.UNREACHABLE
    elif report.ok:
        state = GatewayState.TRUSTED
    else:
        state = GatewayState.UNTRUSTED
    return Probe(
        gateway=label,
        checked_at=report.checked_at,
        state=state,
        cause=diagnosis.cause if diagnosis else None,
        message=diagnosis.message if diagnosis else None,
        fix=diagnosis.fix if diagnosis else None,
        stores=stores,
        chain=chain,
        test_only=find_test_only_ca(chain),
    )


def _store_to_json(store: TrustStore) -> dict[str, Any]:
    return {
        "key": store.key,
        "title": store.title,
        "used_by": store.used_by,
        "path": store.path,
        "directory": store.directory,
        "kind": store.kind,
        "password": store.password,
    }


def _store_from_json(item: Mapping[str, Any]) -> TrustStore:
    kind = item["kind"]
    if kind not in ("pem", "jks", "pkcs12"):
        raise ValueError("store kind")
    return TrustStore(
        key=str(item["key"]),
        title=str(item["title"]),
        used_by=str(item["used_by"]),
        path=str(item["path"]),
        directory=None if item["directory"] is None else str(item["directory"]),
        kind=kind,
        password=str(item["password"]),
    )


__all__ = [
    "PLAN_NAME",
    "plan_for_config",
    "probe_from_report",
    "requests_from_plan",
    "run_probe",
]
