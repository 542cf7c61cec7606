"""doctor's checklist: each check a probe (`probes`) and a pure judgement (`judge`), in a
fixed order, printed one line each or as one JSON document.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError, LockTimeout
from edge_certd.core.gateway import Probe, probes_from_record
from edge_certd.core.schema import SCHEMA_VERSIONS
from edge_certd.diagnose.doctor.judge import (
    NO_GATEWAY,
    Check,
    HeldRoot,
    ReportFacts,
    judge_clock,
    judge_config,
    judge_directory,
    judge_env,
    judge_expiry,
    judge_gateway,
    judge_gateway_watch,
    judge_held,
    judge_keys,
    judge_manifest,
    judge_nested_edge,
    judge_rejected,
    judge_removed,
    judge_service,
    judge_target,
)
from edge_certd.diagnose.doctor.probes import (
    probe_aziot,
    probe_directory,
    probe_env,
    probe_service,
    probe_trust,
)
from edge_certd.diagnose.verify.check import verify_gateway
from edge_certd.diagnose.verify.request import removed_roots, request_for_config
from edge_certd.store.directory_rules import DirectoryRules
from edge_certd.store.state import StatePaths, load_manifest, load_report
from edge_certd.targets.registry import bundle_paths

# Where aziotctl reads an IoT Edge device's configuration (`iotedge config apply`).
AZIOT_CONFIG = "/etc/aziot/config.toml"

_FIX_INDENT = " " * len("[fail] ")


def run_doctor(
    config: Config,
    config_path: str,
    *,
    now: dt.datetime | None = None,
    out: TextIO | None = None,
    as_json: bool = False,
    aziot_config: str = AZIOT_CONFIG,
    gateway: Mapping[str, Any] | None = None,
) -> int:
    """Run every check, print one line each, and return 0 when none failed, else 1.

    Args:
        config: the loaded configuration (loading it is the first check; an invalid
            file never gets here, the CLI reports it with exit code 2).
        config_path: where it came from, for the first line.
        now: the time to judge expiry and the clock against; the system clock if None.
        out: where to print; stdout if None.
        as_json: print one JSON document (`doctor_document`) instead of lines.
        aziot_config: IoT Edge's configuration, for the nested edge check.
        gateway: verify's gateway arguments (target, protocol, connection_string,
            connection_string_file, ca, servername, timeout); None or empty: the configured one.
    """
    stream = out or sys.stdout
    moment = now or dt.datetime.now(dt.UTC)
    results: list[Check] = []
    for check in _checks(config, config_path, moment, aziot_config, dict(gateway or {})):
        results.append(check)
        if as_json:
            continue  # one document at the end
        print(check.line(), file=stream, flush=True)
        if check.fix and check.status in ("fail", "warn"):
            print(f"{_FIX_INDENT}fix: {check.fix}", file=stream)
    if as_json:
        print(json.dumps(doctor_document(results), indent=2, ensure_ascii=False), file=stream)
    else:
        print(_summary(results), file=stream)
    return 1 if any(c.status == "fail" for c in results) else 0


def doctor_document(results: list[Check]) -> dict[str, Any]:
    """`doctor --json`: every check in order (edge_certd/schemas/doctor.schema.json)."""
    return {
        "schema_version": SCHEMA_VERSIONS["doctor"],
        "ok": not any(c.status == "fail" for c in results),
        "checks": [{"name": c.name, "status": c.status, "message": c.message, "fix": c.fix} for c in results],
        "summary": _summary(results),
    }


def _checks(
    config: Config, config_path: str, now: dt.datetime, aziot_config: str, gateway: dict[str, Any]
) -> Iterator[Check]:
    yield judge_config(config_path, os.path.exists(config_path))
    rules = DirectoryRules(config.sources.trusted_group, config.sources.check_ownership)
    yield judge_directory(probe_directory(config.drop_dir, "drop", rules))
    for path in config.keyvault_export_dirs:
        yield judge_directory(probe_directory(path, "keyvault", rules))
    yield judge_service(probe_service(config.on_change.systemctl))
    try:
        manifest, targets = probe_trust(config)
    except LockTimeout as exc:
        yield Check(
            "trust targets",
            "fail",
            f"{exc}; a sync is still running",
            "run edge-certd doctor again when the sync has finished",
        )
        # The manifest is replaced atomically, so it is safe to read for the checks below.
        manifest, targets = load_manifest(StatePaths(config.state_dir)), []
    entries = list(manifest.entries.values())
    report = probe_report(config)
    yield judge_manifest(entries, manifest.problem, config.drop_dir, report.removed)
    if entries:
        for target in targets:
            yield judge_target(target, entries)
    yield judge_env(probe_env(config.bundles.env_file))
    yield judge_expiry(entries, config.expiry.warn_days, now, config.drop_dir)
    yield judge_clock(entries, now)
    yield judge_nested_edge(probe_aziot(aziot_config, bundle_paths(config)["edge_roots"] or ""), entries)
    yield judge_rejected(report)
    yield judge_keys(report)
    yield judge_removed(report)
    held = probe_held(config)
    if held:  # only while a hold runs: a check that always passes would say nothing
        yield judge_held(held)
    yield judge_gateway_watch(
        bool(config.gateway.host or config.gateway.connection_string_file), probe_gateway_watch(config), now
    )
    yield check_gateway(config, gateway)


def probe_gateway_watch(config: Config) -> tuple[Probe, ...]:
    """The gateway watch's last probes, as the daemon recorded them in daemon.json."""
    return probes_from_record(load_report(StatePaths(config.state_dir).daemon))


def probe_held(config: Config) -> tuple[HeldRoot, ...]:
    """The roots the last sync held for the gateway, from status.json (already escaped)."""
    found = load_report(StatePaths(config.state_dir).status).get("held_for_gateway")
    if not isinstance(found, list):
        return ()
    return tuple(
        HeldRoot(
            sha256=str(item.get("sha256", "")),
            subject=str(item.get("subject", "")),
            gateway=str(item.get("gateway", "")),
            until=str(item.get("until", "")),
        )
        for item in found
        if isinstance(item, dict)
    )


def probe_report(config: Config) -> ReportFacts:
    """The last sync's status.json: what it rejected, and the CAs that stay removed."""
    doc = load_report(StatePaths(config.state_dir).status)
    if not doc:
        return ReportFacts(present=False, removed=removed_roots(config))
    rejected = tuple(
        (str(item.get("source", "")), str(item.get("code", "")), str(item.get("message", "")))
        for item in doc.get("rejected") or []
        if isinstance(item, dict)
    )
    total = doc.get("rejected_files_total")
    return ReportFacts(
        present=True,
        rejected=rejected,
        rejected_files=total if isinstance(total, int) else len({r[0] for r in rejected}),
        removed=removed_roots(config),
    )


def check_gateway(config: Config, args: Mapping[str, Any] | None = None) -> Check:
    """Run `verify` as `edge-certd verify` with the same arguments does, and judge its report."""
    given = {key: value for key, value in (args or {}).items() if value is not None}
    asked = any(key in given for key in ("target", "connection_string", "connection_string_file"))
    gateway = config.gateway
    if not asked and not gateway.host and not gateway.connection_string_file:
        return Check("gateway", "skip", NO_GATEWAY)
    try:
        request = request_for_config(config, **given)
    except EdgeCertdError as exc:
        return Check(
            "gateway", "fail", f"cannot verify: {exc}", "fix the gateway section of the configuration"
        )
    return judge_gateway(verify_gateway(request))


def _summary(results: list[Check]) -> str:
    failed = [c.name for c in results if c.status == "fail"]
    warned = [c.name for c in results if c.status == "warn"]
    # Never "every check passed" when the gateway, the point of it all, was not checked.
    unchecked = "; no gateway was checked" if any(c.message == NO_GATEWAY for c in results) else ""
    if failed:
        names = ", ".join(dict.fromkeys(failed))
        return f"doctor: {len(failed)} of {len(results)} checks failed ({names}){unchecked}"
    if warned:
        noun = "warning" if len(warned) == 1 else "warnings"
        return f"doctor: no check failed; {len(warned)} {noun} (warnings do not fail doctor){unchecked}"
    if unchecked:
        return "doctor: no check failed, but no gateway was checked (edge-certd doctor HOST[:PORT])"
    return "doctor: every check passed"
