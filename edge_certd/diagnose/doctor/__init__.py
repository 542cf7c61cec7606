"""`edge-certd doctor`: check the device end to end, one line per check, then the gateway.

The checks run in a fixed order, each as a probe (reads the disk, runs systemctl,
connects to the gateway) followed by a pure judgement in `doctor_judge`:

1. the configuration is valid (it was loaded, or no file exists and defaults apply);
2. each source directory exists with a safe owner and mode;
3. the service is active, when systemd runs;
4. every managed CA is in ca_dir, the system bundle, edge-roots.pem and the Java
   truststore (when one is written);
5. the env file exists and every path in it exists;
6. no managed CA expires within the warning window;
7. the clock is not before the newest managed CA's notBefore;
8. on an IoT Edge device (/etc/aziot/config.toml exists), its trust_bundle_cert names a file
   that holds every managed CA, ideally edge-roots.pem itself (nested edge);
9. the last sync (status.json): no file rejected, no private key in a source, and the CAs
   an operator removed that a source still provides (they stay removed);
10. `verify` against the gateway, exactly as `edge-certd verify` with the same gateway
   arguments (HOST[:PORT], --connection-string, ...) would run it; without any, and none
   configured, doctor says plainly that no gateway was checked.

A check that fails makes the exit code 1; a warning does not (the same rule as
`verify`). Doctor only reads, with one exception shared with sync: while it looks
at the trust targets it holds the state lock, so it never sees a sync half done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError, LockTimeout, SourceError, WriteError
from edge_certd.core.pem import pem_fingerprints
from edge_certd.core.schema import SCHEMA_VERSIONS
from edge_certd.diagnose.doctor.judge import (
    NO_GATEWAY,
    AziotFacts,
    Check,
    DirFacts,
    EnvFacts,
    ReportFacts,
    Role,
    ServiceFacts,
    TargetFacts,
    env_paths,
    judge_clock,
    judge_config,
    judge_directory,
    judge_env,
    judge_expiry,
    judge_gateway,
    judge_keys,
    judge_manifest,
    judge_nested_edge,
    judge_rejected,
    judge_removed,
    judge_service,
    judge_target,
)
from edge_certd.diagnose.verify import removed_roots, request_for_config, verify_gateway
from edge_certd.store.sources import DirectoryRules, check_directory
from edge_certd.store.state import LoadedManifest, StatePaths, load_manifest, load_report, state_lock
from edge_certd.targets.registry import bundle_paths, enabled_targets

__all__ = ["doctor_document", "run_doctor"]

# sd_booted(3): systemd is the init system exactly when this directory exists.
SYSTEMD_RUN_DIR = "/run/systemd/system"
UNIT = "edge-certd"
SYSTEMCTL_TIMEOUT = 15.0
# How long to wait for a running sync before judging the targets; an update with Java
# hooks can take minutes, and judging mid-sync would report half-applied trust as broken.
LOCK_WAIT = 60.0
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
    yield check_gateway(config, gateway)


# --------------------------------------------------------------------------- probes (I/O)


def probe_directory(path: str, role: Role, rules: DirectoryRules) -> DirFacts:
    """What a source directory looks like, and whether sync would refuse it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return DirFacts(path, role, exists=False)
    except OSError as exc:
        return DirFacts(path, role, exists=True, problem=f"cannot be read ({exc.strerror})")
    try:
        check_directory(path, rules)
        problem = None
    except SourceError as exc:
        problem = exc.reason
    return DirFacts(
        path,
        role,
        exists=True,
        problem=problem,
        mode=stat.S_IMODE(info.st_mode),
        owner=f"{_user(info.st_uid)}:{_group(info.st_gid)}",
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def probe_service(systemctl: list[str]) -> ServiceFacts:
    """`systemctl is-active edge-certd`, when systemd is the init system.

    The command is the configuration's on_change.systemctl, the same one the daemon
    uses to restart units, so a wrapper configured there is honoured here too.
    """
    if not os.path.isdir(SYSTEMD_RUN_DIR):
        return ServiceFacts(systemd=False)
    argv = [*systemctl, "is-active", UNIT]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        what = "timed out" if isinstance(exc, subprocess.TimeoutExpired) else str(exc)
        return ServiceFacts(systemd=True, error=f"{' '.join(argv)}: {what}")
    # is-active prints the state and exits 0 only for "active" (systemctl(1)).
    state = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0:
        return ServiceFacts(systemd=True, state=state or "active")
    return ServiceFacts(systemd=True, state=state or f"unknown (exit {proc.returncode})")


def probe_trust(config: Config) -> tuple[LoadedManifest, list[TargetFacts]]:
    """The manifest and what each trust target holds, read under the state lock.

    Raises:
        LockTimeout: a sync held the lock for LOCK_WAIT seconds.
    """
    paths = StatePaths(config.state_dir)
    with _lock_if_possible(paths):
        manifest = load_manifest(paths)
        targets = [
            TargetFacts(h.name, h.location, h.installed, h.skip_reason, h.fix)
            for target in enabled_targets(config)
            for h in target.holdings()
        ]
    return manifest, targets


@contextlib.contextmanager
def _lock_if_possible(paths: StatePaths) -> Iterator[None]:
    """Hold the state lock when this user can take it; otherwise read without it.

    Without the state directory nothing was ever synced, so there is nothing to wait
    for, and doctor must not create it.
    """
    with contextlib.ExitStack() as stack:
        if os.path.isdir(paths.state_dir):
            # WriteError: no permission to open the lock file (not root); read as is.
            with contextlib.suppress(WriteError):
                stack.enter_context(state_lock(paths, LOCK_WAIT))
        yield


def probe_env(env_file: str) -> EnvFacts:
    try:
        with open(env_file, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return EnvFacts(env_file, present=False)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return EnvFacts(env_file, present=True, error=f"cannot be read ({reason})")
    found = tuple((key, value, os.path.isfile(value)) for key, value in env_paths(text))
    return EnvFacts(env_file, present=True, paths=found)


def probe_aziot(path: str, edge_roots: str) -> AziotFacts:
    """IoT Edge's config.toml, and the fingerprints in the file its trust_bundle_cert names."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        return AziotFacts(path, present=False, edge_roots=edge_roots)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return AziotFacts(path, present=True, edge_roots=edge_roots, error=f"cannot be read ({reason})")
    value = document.get("trust_bundle_cert")
    if not isinstance(value, str):
        return AziotFacts(path, present=True, edge_roots=edge_roots)
    # aziot takes a URI (`file:///path`); a bare absolute path is read as the same file.
    bundle = value.removeprefix("file://") if value.startswith(("file:///", "/")) else None
    facts = AziotFacts(path, present=True, edge_roots=edge_roots, trust_bundle_cert=value, bundle_path=bundle)
    if bundle is None:
        return facts
    try:
        with open(bundle, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return dataclasses.replace(facts, bundle_error=f"{bundle}: {exc.strerror or exc}")
    return dataclasses.replace(facts, installed=frozenset(pem_fingerprints(data)))


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
