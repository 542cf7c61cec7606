"""The values `verify` passes around: the request, the steps, the report. Pure.

Also the two small conversions every other verify module needs: a presented
certificate (DER) into a `CertInfo`, and a moment into the one timestamp format
the reports use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from edge_certd.core.text import printable
from edge_certd.core.truststore import StoreKind
from edge_certd.diagnose.connstr import ConnectionString
from edge_certd.targets.base import StoreFile

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOL_PORTS",
    "STEP_TITLES",
    "CertInfo",
    "Diagnosis",
    "Status",
    "Step",
    "StoreCheck",
    "StoreKind",
    "TrustStore",
    "VerifyReport",
    "VerifyRequest",
    "cert_info",
    "is_ip_literal",
    "when",
]

# The ports IoT Edge's edgeHub publishes, one per upstream protocol.
PROTOCOL_PORTS: dict[str, int] = {"mqtts": 8883, "amqps": 5671, "https": 443}
DEFAULT_PROTOCOL = "mqtts"

# A gateway certificate may list thousands of names; a report needs the first few.
MAX_SAN_ENTRIES = 32

# "warn" never fails a check: a certificate that expires within warn_days still
# works today, and failing on it would break scripts that gate on the exit code.
Status = Literal["pass", "fail", "warn", "skip"]

# Every step in the order it is reported; the keys are stable names for --json.
STEP_TITLES: dict[str, str] = {
    "connection_string": "connection string",
    "dns": "DNS resolution",
    "tcp": "TCP connect",
    "tls": "TLS handshake",
    "chain": "presented chain",
    # One step per trust store, named "store:<key>" and titled by the store; "store" alone
    # stands for all of them when they could not be checked.
    "store": "trust stores",
    "hostname": "hostname check",
    "expiry": "certificate expiry",
}


# One set of trust anchors a runtime on this device uses, checked on its own: the same
# description the targets give of the files they write (targets/base.py), with the key
# "ca" for --ca FILE.
TrustStore = StoreFile


@dataclass(frozen=True)
class StoreCheck:
    """What checking the presented chain against one store found (the probe's answer).

    Attributes:
        anchors: how many certificates the store holds (its file; not its directory).
        problem: why the store could not be used at all (missing, empty, unreadable, no
            openssl), or None.
        verified: OpenSSL built a chain from the gateway's leaf to one of its anchors.
        error_code: OpenSSL's X509_V_ERR_* code when it did not.
        error_text: OpenSSL's words for that code.
        anchor: the store's certificate named as the chain's issuer, escaped (for display).
        anchor_sha256: that certificate's SHA-256, when the chain verified against it.
        holds_issuer: the store holds a certificate with the name the chain's top needs.
    """

    anchors: int = 0
    problem: str | None = None
    verified: bool = False
    error_code: int | None = None
    error_text: str | None = None
    anchor: str | None = None
    holds_issuer: bool = False
    anchor_sha256: str | None = None  # the anchor's fingerprint, when the chain verified


@dataclass(frozen=True, kw_only=True)
class RemovedRoot:
    """A CA an operator removed with `edge-certd remove`: it stays removed whatever the drop
    directory holds, so the advice for a missing root must name `edge-certd add`."""

    sha256: str
    subject: str


@dataclass(frozen=True)
class VerifyRequest:
    """What to check and against which trust.

    Attributes:
        host: the gateway to connect to, or None when it could not be determined
            (a connection string without GatewayHostName); the report then says why.
        port: TCP port.
        protocol: "mqtts", "amqps" or "https"; only used in messages and defaults.
        servername: the name sent as SNI and checked against the SAN; None means `host`.
        stores: the trust stores to check the gateway's chain against, each on its own
            (the runtimes' stores, or the one --ca file).
        drop_dir: edge-certd's drop directory, named in the "root not trusted" fix.
        timeout: seconds allowed for each of DNS, TCP connect and the TLS handshake.
        connection_string: the device connection string, when one was given.
        connection_string_source: where it came from, for messages.
        warn_days: certificates expiring within this many days get a warning.
        removed: the CAs an operator removed that a source still provides.
    """

    host: str | None
    port: int
    protocol: str = DEFAULT_PROTOCOL
    servername: str | None = None
    stores: tuple[TrustStore, ...] = ()
    drop_dir: str = "/var/lib/edge-certd/drop"
    timeout: float = 10.0
    connection_string: ConnectionString | None = None
    connection_string_source: str | None = None
    warn_days: int = 30
    removed: tuple[RemovedRoot, ...] = ()

    @property
    def expected_name(self) -> str | None:
        """The name the certificate must carry: what the device puts in SNI."""
        return self.servername or self.host

    @property
    def ca_explicit(self) -> bool:
        """True when the trust came from --ca rather than the runtimes' stores."""
        return any(store.key == "ca" for store in self.stores)


@dataclass(frozen=True)
class CertInfo:
    """One certificate the server presented, as a person needs to see it.

    Every text field came from the gateway, so `cert_info` escapes control characters
    (ESC, CR, LF: a subject must not print a forged `Result: OK` line or erase the real
    one) and cuts each to MAX_FIELD characters, and keeps at most MAX_SAN_ENTRIES names.
    """

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    is_ca: bool = False
    # Compared on the certificate's own names: the escaped, cut strings above could match
    # where the names differ.
    self_signed: bool = False
    common_name: str = ""  # the subject's CN, escaped (test-only CAs are known by it)

    @property
    def san(self) -> tuple[str, ...]:
        """The subjectAltName entries as OpenSSL prints them: DNS:name, IP:address."""
        return tuple(f"DNS:{n}" for n in self.dns_names) + tuple(f"IP:{a}" for a in self.ip_addresses)


@dataclass(frozen=True)
class Step:
    """One check. `name` is a key of STEP_TITLES, or "store:<key>" for one trust store."""

    name: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()
    title: str = ""  # shown instead of STEP_TITLES[name] when set

    @property
    def heading(self) -> str:
        return self.title or STEP_TITLES.get(self.name, self.name)


@dataclass(frozen=True)
class Diagnosis:
    """The one cause reported for a failed check, and what to do about it.

    `cause` is a stable code for scripts (e.g. "untrusted-root", "hostname-mismatch").
    """

    cause: str
    message: str
    fix: str


@dataclass(frozen=True)
class VerifyReport:
    host: str | None
    port: int
    protocol: str
    servername: str | None
    steps: tuple[Step, ...]
    chain: tuple[CertInfo, ...] = ()
    # One line for the whole TLS check: "Verification: OK" only when every store trusts
    # the chain and the name matches; otherwise "Verification error: <first reason>".
    verification: str | None = None
    stores: tuple[tuple[TrustStore, StoreCheck], ...] = ()
    diagnosis: Diagnosis | None = None
    checked_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def ok(self) -> bool:
        """True when every step passed or only warned, and nothing was diagnosed.

        A warning (a certificate expiring within warn_days) does not fail the check;
        a skipped step does, because steps are only skipped after an earlier failure.
        """
        return self.diagnosis is None and all(s.status in ("pass", "warn") for s in self.steps)

    @property
    def warnings(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.status == "warn")

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def store_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.name.startswith("store:"))


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def cert_info(der: bytes) -> CertInfo:
    """Describe one DER certificate. Raises ValueError when it cannot be parsed."""
    # Lazy: the daemon never loads cryptography (docs/ARCHITECTURE.md, test_daemon_footprint).
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(printable(n) for n in san.get_values_for_type(x509.DNSName)[:MAX_SAN_ENTRIES])
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress)[:MAX_SAN_ENTRIES])
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    return CertInfo(
        subject=printable(cert.subject.rfc4514_string()),
        issuer=printable(cert.issuer.rfc4514_string()),
        not_before=_utc(cert, "not_valid_before"),
        not_after=_utc(cert, "not_valid_after"),
        sha256=hashlib.sha256(der).hexdigest(),
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
        self_signed=cert.subject == cert.issuer,
        common_name=_common_name(cert),
    )


def _common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    value = names[0].value if names else ""
    return printable(value if isinstance(value, str) else value.decode("utf-8", "replace"))


def _utc(cert: x509.Certificate, attr: str) -> dt.datetime:
    # cryptography 42 added the *_utc properties and deprecated the naive ones;
    # Debian 12's cryptography 38 has only the naive (UTC) ones.
    aware = getattr(cert, attr + "_utc", None)
    if isinstance(aware, dt.datetime):
        return aware
    naive: dt.datetime = getattr(cert, attr)
    return naive.replace(tzinfo=dt.UTC)


def when(moment: dt.datetime) -> str:
    """A moment as the reports print it: UTC, to the second, with a Z."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
