"""What `doctor` concludes from what its probes saw. Pure: no disk, no clock, no network.

Each `judge_*` function takes plain facts and returns one `Check`: a status, a line
for a person and, when something is wrong, the fix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_certd.core.expiry import expiring
from edge_certd.core.gateway import GatewayState, Probe, status_fragment
from edge_certd.core.model import InstalledCA, Reason
from edge_certd.diagnose.verify.model import RemovedRoot, VerifyReport, when

__all__ = [
    "AziotFacts",
    "Check",
    "CheckStatus",
    "DirFacts",
    "EnvFacts",
    "Role",
    "ServiceFacts",
    "TargetFacts",
    "env_paths",
    "judge_clock",
    "judge_config",
    "judge_directory",
    "judge_env",
    "judge_expiry",
    "judge_gateway",
    "judge_keys",
    "judge_rejected",
    "judge_removed",
    "NO_GATEWAY",
    "ReportFacts",
    "judge_manifest",
    "judge_nested_edge",
    "judge_service",
    "judge_target",
]

# As in verify: "warn" is printed and never changes the exit code.
CheckStatus = Literal["pass", "warn", "fail", "skip"]
Role = Literal["drop", "keyvault"]  # which kind of source directory

_SYNC = "run `edge-certd sync`"
# The gateway line's message when none was given or configured; the summary says it again.
NO_GATEWAY = (
    "no gateway was checked: none given (edge-certd doctor HOST[:PORT]) and none configured "
    "(gateway.host or gateway.connection_string_file)"
)
_KEY_CODES = frozenset({Reason.PRIVATE_KEY, Reason.PKCS12_SEALED})


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    message: str
    fix: str | None = None

    def line(self) -> str:
        return f"[{self.status}] {self.name}: {self.message}"


@dataclass(frozen=True)
class DirFacts:
    """A source directory. `problem` is why sync would refuse it (SourceError.reason)."""

    path: str
    role: Role
    exists: bool
    problem: str | None = None
    mode: int = 0
    owner: str = ""  # user:group


@dataclass(frozen=True)
class ServiceFacts:
    systemd: bool
    state: str = ""  # what `systemctl is-active` printed
    error: str | None = None  # systemctl could not be run


@dataclass(frozen=True)
class TargetFacts:
    """One place the managed CAs must be. `installed` is None when it is not written."""

    name: str
    location: str
    installed: frozenset[str] | None
    skip_reason: str = ""
    fix: str = ""  # what to do when a CA is missing here


@dataclass(frozen=True)
class EnvFacts:
    path: str
    present: bool
    paths: tuple[tuple[str, str, bool], ...] = ()  # (key, path, exists)
    error: str | None = None


@dataclass(frozen=True)
class AziotFacts:
    """IoT Edge's /etc/aziot/config.toml and the file its `trust_bundle_cert` names."""

    path: str
    present: bool
    edge_roots: str  # edge-certd's stable edge-roots.pem
    error: str | None = None  # config.toml cannot be read or parsed
    trust_bundle_cert: str | None = None  # the value as written (a file:// URI)
    bundle_path: str | None = None  # the file it names; None when it names none
    installed: frozenset[str] | None = None  # what that file holds; None when unreadable
    bundle_error: str | None = None


@dataclass(frozen=True)
class ReportFacts:
    """What the last sync's status.json says about the sources.

    `rejected` holds (source, code, message) for the files it lists; `removed` the CAs an
    operator removed that a source still provides (and that are still removed).
    """

    present: bool
    rejected: tuple[tuple[str, str, str], ...] = ()
    rejected_files: int = 0
    removed: tuple[RemovedRoot, ...] = ()


def judge_config(path: str, exists: bool) -> Check:
    # An invalid file never reaches doctor: loading it fails first, with exit code 2.
    if exists:
        return Check("config", "pass", f"{path} is valid")
    return Check("config", "pass", f"{path} does not exist, so every default applies")


def judge_directory(facts: DirFacts) -> Check:
    name = "drop dir" if facts.role == "drop" else "keyvault dir"
    if not facts.exists:
        if facts.role == "keyvault":
            return Check(name, "pass", f"{facts.path} does not exist: not exported yet")
        return Check(
            name,
            "fail",
            f"{facts.path} does not exist",
            f"{_SYNC}, which creates it with the right owner and mode",
        )
    if facts.problem:
        # SourceError reasons end with "; run: <command>" when there is one to run.
        reason, _, command = facts.problem.partition("; run: ")
        return Check(name, "fail", f"{facts.path} {reason}", f"run: {command}" if command else None)
    return Check(name, "pass", f"{facts.path} is safe (mode {facts.mode:04o}, owner {facts.owner})")


def judge_service(facts: ServiceFacts) -> Check:
    if not facts.systemd:
        return Check("service", "skip", "no systemd")
    if facts.error:
        return Check("service", "fail", facts.error, "check that systemctl works on this device")
    if facts.state == "active":
        return Check("service", "pass", "edge-certd is active")
    return Check(
        "service",
        "fail",
        f"edge-certd is {facts.state}",
        "systemctl enable --now edge-certd; journalctl -u edge-certd says why it stopped",
    )


def judge_manifest(
    entries: Sequence[InstalledCA], problem: str | None, drop_dir: str, removed: Sequence[RemovedRoot] = ()
) -> Check:
    if problem:
        return Check(
            "managed CAs", "fail", problem, f"{_SYNC}; it rebuilds the manifest from ca_dir and the sources"
        )
    if not entries and removed:
        return Check("managed CAs", "warn", "none: every CA the sources provide was removed", _ADD_FIX)
    if not entries:
        return Check("managed CAs", "warn", "none yet", f"copy the gateway's root CA (PEM) into {drop_dir}")
    return Check("managed CAs", "pass", f"{_count(len(entries))}: {_subjects(entries)}")


_ADD_FIX = (
    "an operator removed them with `edge-certd remove`, and a copy in the drop directory changes "
    "nothing; `edge-certd add FILE` (FILE: the root CA file) trusts one again"
)
MAX_NAMED = 5  # files or CAs one line names; the rest are counted


def judge_rejected(facts: ReportFacts) -> Check:
    """Files the last sync refused (a private key has its own check below)."""
    name = "rejected files"
    if not facts.present:
        return Check(name, "skip", "no sync has reported yet (no status.json)")
    files: dict[str, str] = {}
    for source, code, message in facts.rejected:
        if code not in _KEY_CODES:
            files.setdefault(source, f"{code}: {message}")
    if not files:
        return Check(name, "pass", "the last sync rejected no file")
    shown = "; ".join(f"{source} ({why})" for source, why in list(files.items())[:MAX_NAMED])
    total = max(facts.rejected_files, len(files))
    more = f"; and {total - MAX_NAMED} more (edge-certd status)" if total > MAX_NAMED else ""
    return Check(
        name,
        "warn",
        f"{total} file{'s' if total != 1 else ''} rejected: {shown}{more}",
        "replace each with the gateway's root CA file or delete it; `edge-certd inspect FILE` "
        "shows what a file holds",
    )


def judge_keys(facts: ReportFacts) -> Check:
    """A private key (or a PFX nobody can open) in a source: refused, and it should not be here."""
    name = "keys in sources"
    if not facts.present:
        return Check(name, "skip", "no sync has reported yet (no status.json)")
    sources = list(dict.fromkeys(source for source, code, _ in facts.rejected if code in _KEY_CODES))
    if not sources:
        return Check(name, "pass", "no source file holds a private key")
    shown = ", ".join(sources[:MAX_NAMED]) + (" and more" if len(sources) > MAX_NAMED else "")
    return Check(
        name,
        "fail",
        f"{shown} hold{'s' if len(sources) == 1 else ''} (or may hold) a private key",
        "delete the file, copy only the root CA certificate, and treat the key as exposed",
    )


def judge_removed(facts: ReportFacts) -> Check:
    name = "removed CAs"
    if not facts.removed:
        return Check(name, "pass", "no CA a source provides was removed by an operator")
    shown = ", ".join(f"{r.subject} (sha256 {r.sha256[:16]})" for r in facts.removed[:MAX_NAMED])
    count = len(facts.removed)
    return Check(
        name,
        "warn",
        f"{count} CA{'s' if count != 1 else ''} stay{'s' if count == 1 else ''} removed although "
        f"a source still provides {'it' if count == 1 else 'them'}: {shown}",
        _ADD_FIX,
    )


@dataclass(frozen=True, kw_only=True)
class HeldRoot:
    """A root the last sync kept because its source is gone and the gateway still anchors at
    it (status.json's held_for_gateway; core/hold.py)."""

    sha256: str
    subject: str
    gateway: str
    until: str


def judge_held(held: Sequence[HeldRoot]) -> Check:
    """A warning while a root is held: the rotation's order is wrong and the hold has an end."""
    shown = "; ".join(
        f"{h.subject} (sha256 {h.sha256[:16]}) for gateway {h.gateway}, until {h.until}"
        for h in held[:MAX_NAMED]
    )
    return Check(
        "roots held for the gateway",
        "warn",
        f"its source is gone but the gateway still anchors at it, so it stays until the gateway "
        f"moves or the hold ends: {shown}",
        "move the gateway to the new root, or publish the roots package with both roots again "
        "(docs/ROTATION.md); `edge-certd remove FINGERPRINT` if the root is compromised",
    )


def judge_target(facts: TargetFacts, entries: Sequence[InstalledCA]) -> Check:
    if facts.installed is None:
        return Check(facts.name, "skip", f"not written: {facts.skip_reason}")
    missing = [e for e in entries if e.sha256 not in facts.installed]
    if missing:
        shown = ", ".join(f"{e.subject} (sha256 {e.sha256[:16]})" for e in missing)
        return Check(
            facts.name,
            "fail",
            f"{len(missing)} of {_count(len(entries))} missing from {facts.location}: {shown}",
            facts.fix or _SYNC,
        )
    return Check(facts.name, "pass", f"holds every managed CA ({facts.location})")


def env_paths(text: str) -> Iterator[tuple[str, str]]:
    """The KEY=value lines of an env file whose value is an absolute path.

    Reads what both `. file` and systemd's EnvironmentFile= accept: comments, blank
    lines, an optional `export`, and values in single or double quotes.
    """
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if value.startswith("/"):
            yield key.strip(), value


def judge_env(facts: EnvFacts) -> Check:
    if not facts.present:
        return Check("env file", "fail", f"{facts.path} is missing", f"{_SYNC}; it writes it")
    if facts.error:
        return Check("env file", "fail", f"{facts.path} {facts.error}")
    missing = [f"{key}={path}" for key, path, exists in facts.paths if not exists]
    if missing:
        return Check(
            "env file",
            "fail",
            f"{facts.path} points at missing files: {', '.join(missing)}",
            f"{_SYNC}; it rewrites the bundles and the env file",
        )
    return Check("env file", "pass", f"{facts.path} points at {len(facts.paths)} files, all present")


def judge_nested_edge(facts: AziotFacts, entries: Sequence[InstalledCA]) -> Check:
    """On a child IoT Edge device, trust_bundle_cert must hold the managed roots; pointing it
    at edge-roots.pem itself is what keeps it right after a rotation."""
    name = "nested edge"
    fix = (
        f'set trust_bundle_cert = "file://{facts.edge_roots}" in {facts.path}, run '
        "`iotedge config apply`, and add [iotedge, config, apply] to on_change.commands"
    )
    if not facts.present:
        return Check(name, "skip", f"no {facts.path}: not an IoT Edge device")
    if facts.error:
        return Check(name, "fail", f"{facts.path} {facts.error}", f"fix {facts.path}, then {fix}")
    if facts.trust_bundle_cert is None:
        return Check(
            name, "warn", f"{facts.path} has no trust_bundle_cert; a child IoT Edge device needs one", fix
        )
    where = f"trust_bundle_cert {facts.trust_bundle_cert!r}"
    if facts.bundle_path is None:
        return Check(name, "fail", f"{where} is not a file:// URI", fix)
    if facts.installed is None:
        return Check(name, "fail", f"{where}: {facts.bundle_error or 'cannot be read'}", fix)
    if not entries:
        return Check(name, "warn", f"{where}; no managed CA yet to look for in it")
    missing = [e for e in entries if e.sha256 not in facts.installed]
    if missing:
        shown = ", ".join(f"{e.subject} (sha256 {e.sha256[:16]})" for e in missing)
        return Check(name, "fail", f"{where} lacks {len(missing)} of {_count(len(entries))}: {shown}", fix)
    if facts.bundle_path != facts.edge_roots:
        return Check(
            name,
            "warn",
            f"{where} holds every managed CA, but is a copy: a rotated root will not reach it",
            fix,
        )
    return Check(name, "pass", f"{where} is edge-certd's edge-roots.pem ({_count(len(entries))})")


def judge_expiry(
    entries: Sequence[InstalledCA], warn_days: Sequence[int], now: dt.datetime, drop_dir: str
) -> Check:
    """Expired is a failure; expiring within the window is a warning (it still works).
    The window is core.expiry's, the same rule `status` and the daemon use."""
    if not entries:
        return Check("expiry", "skip", "no managed CA")
    window_days = max(warn_days, default=0)
    found = expiring(entries, warn_days, now)
    expired = [e for e in found if e.expired]
    soon = [e for e in found if not e.expired]
    if expired:
        shown = "; ".join(f"{e.ca.subject} expired on {when(e.ca.not_after)}" for e in expired)
        return Check(
            "expiry",
            "fail",
            shown,
            f"copy the gateway's current root CA into {drop_dir}; expired CAs are removed at the next sync",
        )
    if soon:
        shown = "; ".join(
            f"{e.ca.subject} expires on {when(e.ca.not_after)} (in {e.days_left} days)" for e in soon
        )
        return Check(
            "expiry",
            "warn",
            f"{shown}, within the {window_days}-day warning window",
            f"copy the gateway's renewed root CA into {drop_dir} before then",
        )
    first = min(entries, key=lambda e: e.not_after)
    return Check(
        "expiry",
        "pass",
        f"no managed CA expires within {window_days} days "
        f"(the first is {first.subject}, on {when(first.not_after)})",
    )


def judge_clock(entries: Sequence[InstalledCA], now: dt.datetime) -> Check:
    """A clock before the newest CA's notBefore is certainly wrong: that CA exists."""
    if not entries:
        return Check("clock", "skip", "no managed CA to compare the clock with")
    newest = max(entries, key=lambda e: e.not_before)
    if now < newest.not_before:
        return Check(
            "clock",
            "fail",
            f"the clock reads {when(now)}, before {newest.subject} became valid "
            f"({when(newest.not_before)}), so TLS to the gateway will fail",
            "set the clock: enable NTP (timedatectl set-ntp true) or fix the RTC",
        )
    return Check(
        "clock", "pass", f"{when(now)} is after the newest managed CA's notBefore ({when(newest.not_before)})"
    )


def judge_gateway(report: VerifyReport) -> Check:
    target = _target(report)
    details = "`edge-certd verify` shows every step"
    if not report.ok:
        if report.diagnosis is not None:
            return Check(
                "gateway",
                "fail",
                f"{target}: {report.diagnosis.message}",
                f"{report.diagnosis.fix} ({details})",
            )
        failed = next((s for s in report.steps if s.status != "pass"), None)
        reason = failed.summary if failed else "the check failed"
        return Check("gateway", "fail", f"{target}: {reason}", details)
    tls = report.step("tls")
    how = f"{tls.summary}, " if tls else ""
    # verify checks each runtime's store on its own; name them, so a pass says for whom.
    by = ", ".join(s.heading for s in report.store_steps)
    trusted = f"reachable and trusted by {by}" if by else "reachable and trusted"
    if report.warnings:
        shown = "; ".join(s.summary for s in report.warnings)
        return Check(
            "gateway",
            "warn",
            f"{target} is {trusted} ({how}{report.verification or 'verified'}), but: {shown}",
            details,
        )
    return Check(
        "gateway",
        "pass",
        f"{target} is {trusted} ({how}{report.verification or 'verified'}, hostname matches)",
    )


def _target(report: VerifyReport) -> str:
    if not report.host:
        return "(no gateway host)"
    host = f"[{report.host}]" if ":" in report.host else report.host
    return f"{host}:{report.port} ({report.protocol})"


def _count(n: int) -> str:
    return f"{n} managed CA{'s' if n != 1 else ''}"


def _subjects(entries: Sequence[InstalledCA], limit: int = 3) -> str:
    names = sorted(e.subject for e in entries)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# The probe runs every 5 minutes; three missed runs mean its timer is stopped or it fails.
STALE_PROBE = dt.timedelta(minutes=20)


def judge_gateway_watch(enabled: bool, probes: Sequence[Probe], now: dt.datetime) -> Check:
    """What the gateway watch (edge-certd-probe.timer) last saw, as the daemon recorded it."""
    name = "gateway watch"
    if not enabled:
        return Check(name, "skip", "no gateway configured, so nothing watches it (set gateway.host)")
    if not probes:
        return Check(
            name,
            "warn",
            "the gateway has not been probed yet",
            "systemctl status edge-certd-probe.timer edge-certd-probe.service",
        )
    worst = max(probes, key=lambda p: _WATCH_ORDER[p.state])
    seen = "; ".join(status_fragment(p, now) for p in probes)
    oldest = min(p.checked_at for p in probes)
    if worst.state is GatewayState.UNTRUSTED:
        return Check(name, "fail", seen, worst.fix or "run edge-certd verify for the diagnosis")
    if now - oldest > STALE_PROBE:
        return Check(
            name,
            "warn",
            f"{seen}: older than {STALE_PROBE.seconds // 60} minutes",
            "systemctl status edge-certd-probe.timer edge-certd-probe.service",
        )
    test_only = next((p.test_only for p in probes if p.test_only), None)
    if test_only:
        return Check(name, "warn", f"{seen}; {test_only}", "give the gateway an Edge CA from your own PKI")
    if worst.state is not GatewayState.TRUSTED:
        return Check(name, "warn", seen, worst.message or "run edge-certd verify")
    return Check(name, "pass", seen)


_WATCH_ORDER = {
    GatewayState.TRUSTED: 0,
    GatewayState.UNKNOWN: 1,
    GatewayState.UNREACHABLE: 2,
    GatewayState.UNTRUSTED: 3,
}
