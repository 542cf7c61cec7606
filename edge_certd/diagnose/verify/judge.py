"""Turning what the probes saw into steps and one diagnosis. Pure: no I/O, no clock.

Every `judge_*` function returns the step it decided and the diagnoses it found;
`verify_gateway` keeps the first diagnosis in the order it asks, which puts the
most fundamental cause first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_certd.diagnose.verify.model import (
    CertInfo,
    Diagnosis,
    RemovedRoot,
    Step,
    StoreCheck,
    TrustStore,
    VerifyRequest,
    when,
)

if TYPE_CHECKING:
    from edge_certd.diagnose.verify.net import Connected, Handshake, Resolved

__all__ = [
    "FIREWALL_PORTS",
    "Judged",
    "judge_chain",
    "judge_connection_string",
    "judge_dns",
    "judge_expiry",
    "judge_hostname",
    "judge_store",
    "judge_tcp",
    "judge_tls",
    "match_hostname",
    "verification_line",
]

FIREWALL_PORTS = "8883 (MQTTS), 5671 (AMQPS) and 443 (HTTPS)"
ROOT_EXAMPLE = "PEM, e.g. the IoT Edge azure-iot-test-only.root.ca.cert.pem or your own root"

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that mean "no trusted root for this
# chain", as opposed to a chain that is trusted but broken in some other way.
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})
_NOT_YET_VALID_CODES = frozenset({9})
_EXPIRED_CODES = frozenset({10})

Judged = tuple[Step, list[Diagnosis]]


def judge_connection_string(request: VerifyRequest) -> Judged:
    cs = request.connection_string
    assert cs is not None
    details = (cs.redacted(),)
    if not cs.gateway_host_name:
        return Step("connection_string", "fail", "no GatewayHostName", details), [
            Diagnosis(
                "no-gateway-hostname",
                "the connection string has no GatewayHostName, so the device would bypass the "
                f"gateway and connect to the IoT hub {cs.host_name} directly",
                "append ;GatewayHostName=<the gateway's hostname> to the device connection "
                "string (the hostname set in the gateway's /etc/aziot/config.toml)",
            )
        ]
    summary = f"GatewayHostName={cs.gateway_host_name}"
    if request.host and request.host.lower() != cs.gateway_host_name.lower():
        note = f"the device connects to {cs.gateway_host_name}, but this check uses {request.host}"
        return Step("connection_string", "warn", summary, (*details, note)), []
    return Step("connection_string", "pass", summary, details), []


def judge_dns(request: VerifyRequest, resolved: Resolved) -> Judged:
    host = request.host or ""
    if resolved.error:
        return Step("dns", "fail", f"{host}: {resolved.error}"), [
            Diagnosis(
                "dns",
                f"the name {host} does not resolve: {resolved.error}",
                f"add a DNS record for {host}, or a line '<gateway IP> {host}' to /etc/hosts on this device",
            )
        ]
    shown = ", ".join(resolved.hosts())
    if resolved.literal:
        return Step("dns", "pass", f"{host} is an IP address, no lookup needed"), []
    return Step("dns", "pass", f"{host} -> {shown}"), []


def judge_tcp(request: VerifyRequest, connected: Connected) -> Judged:
    details = tuple(f"{addr}: {text}" for addr, _kind, text in connected.failures)
    if connected.sock is not None:
        summary = f"connected to {connected.address} in {connected.elapsed_ms:.0f} ms"
        return Step("tcp", "pass", summary, details), []
    kinds = {kind for _addr, kind, _text in connected.failures}
    port = request.port
    if kinds == {"refused"}:
        what = "connection refused"
        fix = (
            f"make sure the gateway listens on port {port} (edgeHub must be running and publish "
            f"the port) and that no firewall rejects it; IoT Edge needs {FIREWALL_PORTS}"
        )
        cause = "connection-refused"
    elif "timeout" in kinds:
        what = f"connection timed out after {request.timeout:g} s"
        fix = (
            f"check the firewall between this device and the gateway for port {port} "
            f"(IoT Edge needs {FIREWALL_PORTS}) and that the gateway is up"
        )
        cause = "connection-timeout"
    else:
        what = "; ".join(text for _addr, _kind, text in connected.failures) or "no address"
        fix = f"check the network route to the gateway and the firewall for {FIREWALL_PORTS}"
        cause = "connection-failed"
    return Step("tcp", "fail", f"{what} on port {port}", details), [
        Diagnosis(cause, f"{what} on port {port} at {request.host}", fix)
    ]


def judge_tls(request: VerifyRequest, shake: Handshake) -> Judged:
    where = f"{request.host} port {request.port}"
    if shake.error is None:
        summary = f"{shake.version or 'TLS'}, {shake.cipher or 'unknown cipher'}"
        return Step("tls", "pass", summary, (f"took {shake.elapsed_ms:.0f} ms",)), []
    if shake.error == "not-tls":
        preview = _preview(shake.first_bytes)
        return Step("tls", "fail", f"the server answered with {preview}, not TLS"), [
            Diagnosis(
                "not-tls",
                f"the server at {where} did not speak TLS: it answered {preview}",
                f"point the device at the gateway's TLS port ({FIREWALL_PORTS}); "
                f"port {request.port} seems to run a plain-text service",
            )
        ]
    if shake.error == "timeout":
        return Step("tls", "fail", f"handshake timed out: {shake.error_text}"), [
            Diagnosis(
                "handshake-timeout",
                f"the server at {where} accepted the TCP connection but did not answer the TLS "
                f"handshake within {request.timeout:g} s",
                "check that edgeHub (not another service) owns the port and is healthy "
                "(iotedge check, iotedge logs edgeHub), and that no middlebox swallows TLS",
            )
        ]
    if shake.error in ("eof", "reset"):
        return Step("tls", "fail", f"the server closed the connection: {shake.error_text}"), [
            Diagnosis(
                "handshake-closed",
                f"the server at {where} closed the connection without completing a TLS "
                "handshake: it may not speak TLS on this port, or it rejected this client",
                f"check that port {request.port} is the gateway's TLS port and look at the "
                "gateway's log for the rejected connection",
            )
        ]
    return Step("tls", "fail", f"handshake failed: {shake.error_text}"), [
        Diagnosis(
            "handshake-failed",
            f"the TLS handshake with {where} failed: {shake.error_text}",
            "compare the TLS versions and ciphers the gateway allows with this device's "
            "(TLS 1.2 or later is required)",
        )
    ]


def judge_chain(chain: tuple[CertInfo, ...]) -> Step:
    if not chain:
        return Step("chain", "fail", "the server presented no certificate")
    details: list[str] = []
    for depth, cert in enumerate(chain):
        details.append(f"{depth} subject: {cert.subject}")
        details.append(f"  issuer:  {cert.issuer}")
        details.append(f"  valid:   {when(cert.not_before)} to {when(cert.not_after)}")
        if cert.san:
            details.append(f"  SAN:     {', '.join(cert.san)}")
    count = f"{len(chain)} certificate{'s' if len(chain) != 1 else ''}"
    return Step("chain", "pass", count, tuple(details))


def judge_store(
    request: VerifyRequest,
    store: TrustStore,
    check: StoreCheck,
    chain: tuple[CertInfo, ...],
    trusted_elsewhere: Sequence[TrustStore] = (),
) -> Judged:
    """One trust store's line: does the runtime that reads it trust the gateway's chain?

    `trusted_elsewhere` are the other stores that do trust it; they tell a root edge-certd
    manages but has not brought into this store from one it was never given.
    """
    name = f"store:{store.key}"
    where = store.path + (f" and {store.directory}" if store.directory else "")
    count = f"{check.anchors} certificate{'s' if check.anchors != 1 else ''}"
    details = (f"{where} ({count}), read by {store.used_by}",)
    if check.problem is not None:
        step = Step(name, "fail", check.problem, details, store.title)
        return step, [_store_unusable(request, store, check, chain)]
    if check.verified:
        summary = "trusts the chain" + (f", anchored at {check.anchor}" if check.anchor else "")
        return Step(name, "pass", summary, details, store.title), []
    reason = check.error_text or f"error {check.error_code}"
    step = Step(name, "fail", f"does not trust the chain: {reason}", details, store.title)
    code = check.error_code
    if code in _NOT_YET_VALID_CODES or code in _EXPIRED_CODES:
        return step, []  # judge_expiry names the certificate and the clock
    if code in _UNTRUSTED_CODES and chain:
        return step, [_untrusted_root(request, store, check, chain, trusted_elsewhere)]
    return step, [
        Diagnosis(
            "verification-failed",
            f"the gateway's certificate chain did not verify against {store.title}: {reason}",
            "reissue the gateway's certificates (iotedge check names the broken one)",
        )
    ]


def _root_name(chain: tuple[CertInfo, ...]) -> str:
    if not chain:
        return "the gateway's root CA"
    top = chain[-1]
    return top.subject if top.self_signed else top.issuer


def _drop_fix(request: VerifyRequest, needed: str, chain: tuple[CertInfo, ...] = ()) -> str:
    removed = removed_root(request, chain)
    if removed is not None:
        # A copy in the drop directory changes nothing: the CA stays removed until `add`.
        return (
            f"the root CA {removed.subject} (sha256 {removed.sha256[:16]}) was removed by an "
            "operator with `edge-certd remove` and stays removed whatever the drop directory "
            "holds; to trust it again, run `edge-certd add FILE` with its root CA file"
        )
    return (
        f"copy the root CA certificate {needed} ({ROOT_EXAMPLE}) into the drop directory "
        f"{request.drop_dir}; edge-certd installs it for every runtime"
    )


def removed_root(request: VerifyRequest, chain: tuple[CertInfo, ...]) -> RemovedRoot | None:
    """The operator-removed CA the chain needs: the root it sent, by fingerprint, or else the
    issuer its top names, by subject."""
    if not request.removed or not chain:
        return None
    top = chain[-1]
    if top.self_signed:
        return next((r for r in request.removed if r.sha256 == top.sha256), None)
    return next((r for r in request.removed if r.subject == top.issuer), None)


def _store_unusable(
    request: VerifyRequest, store: TrustStore, check: StoreCheck, chain: tuple[CertInfo, ...]
) -> Diagnosis:
    problem = check.problem or ""
    readers = "" if store.key == "ca" else f", which {store.used_by} read,"
    message = f"{store.title} ({store.path}){readers} {problem}, so no chain can verify against it"
    needed = _root_name(chain)
    if problem.startswith("cannot be checked"):
        return Diagnosis("cannot-check", f"{store.title} {problem}", "install openssl (apt install openssl)")
    if store.key == "ca":
        return Diagnosis("no-trust", message, f"pass --ca a PEM file that holds the root CA {needed}")
    if problem.startswith("cannot be read:"):
        return Diagnosis("no-trust", message, "run `edge-certd verify` as a user who may read it (root)")
    if "password" in problem:
        fix = (
            "set bundles.java_password to the truststore's password, or run `edge-certd sync` "
            "so edge-certd rebuilds the truststore with the configured one"
        )
        return Diagnosis("no-trust", message, fix)
    if problem == "not found" or "could not load" in problem:
        fix = (
            "start edge-certd (systemctl enable --now edge-certd) or run `edge-certd sync`, so "
            f"it writes every runtime's store; first {_drop_fix(request, needed, chain)}"
        )
        return Diagnosis("no-trust", message, fix)
    return Diagnosis("no-trust", message, _drop_fix(request, needed, chain))


def _untrusted_root(
    request: VerifyRequest,
    store: TrustStore,
    check: StoreCheck,
    chain: tuple[CertInfo, ...],
    trusted_elsewhere: Sequence[TrustStore],
) -> Diagnosis:
    top = chain[-1]
    needed = _root_name(chain)
    who = f"{store.title} ({store.path})"
    if top.self_signed:
        message = f"the gateway sent its root CA {needed}, but {who} does not trust it"
    else:
        message = (
            f"the chain the gateway presented ends at {top.subject}, whose issuer {needed} "
            f"is not a trusted CA in {who}"
        )
    if store.key != "ca":
        message += f", so {store.used_by} cannot connect"
    if check.holds_issuer:
        message += "; it holds a CA of that name, but not the one that signed the chain"
    others = [s.title for s in trusted_elsewhere]
    if others:
        message += f" (only {', '.join(others)} trust{'s' if len(others) == 1 else ''} it)"
    if store.key == "ca":
        fix = (
            f"pass --ca a PEM file that holds the root CA {needed}, or copy that root into the "
            f"drop directory {request.drop_dir} so edge-certd installs it for every runtime"
        )
    elif any(s.key == "edge-roots" for s in trusted_elsewhere):
        # edge-certd manages the root (edge-roots.pem holds only what it manages), so
        # this store is behind: a sync that could not finish, not a missing file.
        fix = (
            "edge-certd already manages this root: run `edge-certd sync` and read "
            "`edge-certd status` for the step that failed"
        )
    elif removed_root(request, chain) is not None:
        fix = _drop_fix(request, needed, chain)
    elif check.holds_issuer:
        fix = (
            f"the gateway's root CA was regenerated: {_drop_fix(request, needed)}, and remove "
            "the old one with `edge-certd remove`"
        )
    else:
        fix = _drop_fix(request, needed, chain)
    return Diagnosis("untrusted-root", message, fix)


def verification_line(results: Sequence[tuple[TrustStore, StoreCheck]], hostname: Step | None) -> str:
    """The one verdict line: OK only when every store trusts the chain and the name matches.

    Otherwise the first reason, with the stores it applies to.
    """
    failed = [(store, check) for store, check in results if not check.verified]
    if failed:
        store, check = failed[0]
        reason = check.error_text or check.problem or f"error {check.error_code}"
        same = [
            s.title for s, c in failed if (c.error_text or c.problem) == (check.error_text or check.problem)
        ]
        return f"Verification error: {reason} ({', '.join(same)})"
    if not results:
        return "Verification error: no trust store to check the chain against"
    if hostname is None or hostname.status != "pass":
        why = hostname.summary if hostname is not None else "not checked"
        return f"Verification error: hostname mismatch ({why})"
    return "Verification: OK"


def judge_hostname(request: VerifyRequest, chain: tuple[CertInfo, ...]) -> Judged:
    name = request.expected_name or ""
    if not chain:
        return Step("hostname", "skip", "no certificate to check"), []
    leaf = chain[0]
    fix = (
        "check GatewayHostName in the device connection string against the hostname the "
        "gateway is configured with (hostname in /etc/aziot/config.toml), or connect with "
        "--servername set to a name in the certificate"
    )
    if not leaf.san:
        return Step("hostname", "fail", "the certificate has no subjectAltName"), [
            Diagnosis(
                "no-san",
                f"the gateway's certificate ({leaf.subject}) lists no subjectAltName, and "
                "TLS clients no longer accept a name in the Common Name alone; you connected "
                f"to {name}",
                f"reissue the gateway's server certificate with {name} in subjectAltName",
            )
        ]
    matched = match_hostname(name, leaf)
    if matched:
        return Step("hostname", "pass", f"{name} matches SAN {matched}"), []
    names = ", ".join(leaf.san)
    return Step("hostname", "fail", f"{name} is not in the SAN ({names})"), [
        Diagnosis(
            "hostname-mismatch",
            f"the certificate names {names} but you connected to {name}",
            fix,
        )
    ]


def match_hostname(name: str, cert: CertInfo) -> str | None:
    """The SAN entry that `name` matches, with OpenSSL's rules as Python configures them:
    IPs match IP entries only; a wildcard is a whole left-most label matching one label."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        same = (a for a in cert.ip_addresses if ipaddress.ip_address(a) == ip)
        return next((f"IP:{a}" for a in same), None)
    wanted = name.rstrip(".").lower().split(".")
    for entry in cert.dns_names:
        pattern = entry.rstrip(".").lower().split(".")
        if len(pattern) != len(wanted):
            continue
        first_ok = pattern[0] == wanted[0] or (pattern[0] == "*" and len(pattern) > 2)
        if first_ok and pattern[1:] == wanted[1:]:
            return f"DNS:{entry}"
    return None


def judge_expiry(chain: tuple[CertInfo, ...], now: dt.datetime, warn_days: int) -> Judged:
    if not chain:
        return Step("expiry", "skip", "no certificate to check"), []
    clock = when(now)
    future = [c for c in chain if now < c.not_before]
    expired = [c for c in chain if now > c.not_after]
    soon = [c for c in chain if now <= c.not_after < now + dt.timedelta(days=warn_days)]
    if future:
        cert = future[0]
        return Step("expiry", "fail", f"{cert.subject} is not valid yet"), [
            Diagnosis(
                "not-yet-valid",
                f"the certificate {cert.subject} is not valid until {when(cert.not_before)}, "
                f"and this device's clock reads {clock}",
                "the device clock is likely wrong: set it (enable NTP, e.g. "
                "`timedatectl set-ntp true`, or fix the RTC); if the clock is right, the "
                "certificate was issued with a start date in the future and must be reissued",
            )
        ]
    if expired:
        cert = expired[0]
        return Step("expiry", "fail", f"{cert.subject} expired on {when(cert.not_after)}"), [
            Diagnosis(
                "expired",
                f"the certificate {cert.subject} expired on {when(cert.not_after)} "
                f"(this device's clock reads {clock})",
                "renew the gateway's certificate (IoT Edge renews its edge CA and server "
                "certificates itself; restart it with `iotedge system restart` if it has not)",
            )
        ]
    if soon:
        details = tuple(f"{c.subject} expires {when(c.not_after)}" for c in soon)
        return Step("expiry", "warn", f"expires within {warn_days} days", details), []
    return Step("expiry", "pass", f"every certificate is valid for more than {warn_days} days"), []


def _preview(data: bytes) -> str:
    text = data[:40].decode("ascii", "replace")
    printable = "".join(ch if ch.isprintable() else "." for ch in text).strip()
    return repr(printable) if printable else f"{len(data)} non-text bytes"
