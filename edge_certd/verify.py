"""`edge-certd verify`: can this device reach its gateway over TLS, and if not, why?

The check runs as a fixed sequence of steps (connection string, DNS, TCP, TLS
handshake, presented chain, chain verification, hostname, expiry). Each step
records pass / fail / warn / skip with its details, and the report carries ONE
diagnosis: the most fundamental failure, with the fix a person should apply.

Side effects (DNS, sockets, reading trust files) live in the `_probe_*`
functions; turning their raw results into steps and a diagnosis is pure.

Chain verification is OpenSSL's own (via `ssl`), so its verdict and wording are
exactly what `openssl s_client` prints and what the device's TLS stack will say.
The hostname check is done here rather than by OpenSSL so that a wrong name and
an untrusted chain are reported separately instead of the first one hiding the
second.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from edge_certd.config import GatewayConfig
from edge_certd.connstr import ConnectionString, ConnectionStringError, parse_connection_string
from edge_certd.errors import UsageError

__all__ = [
    "PROTOCOL_PORTS",
    "CertInfo",
    "Diagnosis",
    "Step",
    "VerifyReport",
    "VerifyRequest",
    "parse_host_port",
    "render_text",
    "report_to_json",
    "request_from_args",
    "verify_gateway",
]

# The ports IoT Edge's edgeHub publishes, one per upstream protocol.
PROTOCOL_PORTS: dict[str, int] = {"mqtts": 8883, "amqps": 5671, "https": 443}
DEFAULT_PROTOCOL = "mqtts"
_FIREWALL_PORTS = "8883 (MQTTS), 5671 (AMQPS) and 443 (HTTPS)"

Status = Literal["pass", "fail", "warn", "skip"]

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that mean "no trusted root for this
# chain", as opposed to a chain that is trusted but broken in some other way.
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})
_NOT_YET_VALID_CODES = frozenset({9})
_EXPIRED_CODES = frozenset({10})

# The first byte of every TLS record is its content type: 20-23 (RFC 8446 section 5.1).
# Anything else in reply to a ClientHello means the peer is not speaking TLS.
_TLS_RECORD_TYPES = frozenset({20, 21, 22, 23})


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VerifyRequest:
    """What to check and against which trust.

    Attributes:
        host: the gateway to connect to, or None when it could not be determined
            (a connection string without GatewayHostName); the report then says why.
        port: TCP port.
        protocol: "mqtts", "amqps" or "https"; only used in messages and defaults.
        servername: the name sent as SNI and checked against the SAN; None means `host`.
        ca_files: PEM files whose certificates are trusted (nothing else is).
        ca_explicit: True when ca_files came from --ca rather than edge-certd's defaults.
        drop_dir: edge-certd's drop directory, named in the "root not trusted" fix.
        timeout: seconds allowed for each of DNS, TCP connect and the TLS handshake.
        connection_string: the device connection string, when one was given.
        connection_string_source: where it came from, for messages.
        warn_days: certificates expiring within this many days get a warning.
    """

    host: str | None
    port: int
    protocol: str = DEFAULT_PROTOCOL
    servername: str | None = None
    ca_files: tuple[str, ...] = ()
    ca_explicit: bool = False
    drop_dir: str = "/var/lib/edge-certd/drop"
    timeout: float = 10.0
    connection_string: ConnectionString | None = None
    connection_string_source: str | None = None
    warn_days: int = 30

    @property
    def expected_name(self) -> str | None:
        """The name the certificate must carry: what the device puts in SNI."""
        return self.servername or self.host


@dataclass(frozen=True)
class CertInfo:
    """One certificate the server presented, as a person needs to see it."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    is_ca: bool = False

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer

    @property
    def san(self) -> tuple[str, ...]:
        """The subjectAltName entries as OpenSSL prints them: DNS:name, IP:address."""
        return tuple(f"DNS:{n}" for n in self.dns_names) + tuple(
            f"IP:{a}" for a in self.ip_addresses
        )


@dataclass(frozen=True)
class Step:
    """One check. `name` is a stable key: connection_string, dns, tcp, tls, chain,
    verification, hostname, expiry."""

    name: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()


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
    verification: str | None = None
    diagnosis: Diagnosis | None = None
    checked_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def ok(self) -> bool:
        """True only when every step passed (warnings allowed) and nothing was diagnosed."""
        return self.diagnosis is None and all(s.status in ("pass", "warn") for s in self.steps)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


_STEP_TITLES: dict[str, str] = {
    "connection_string": "connection string",
    "dns": "DNS resolution",
    "tcp": "TCP connect",
    "tls": "TLS handshake",
    "chain": "presented chain",
    "verification": "chain verification",
    "hostname": "hostname check",
    "expiry": "certificate expiry",
}


# --------------------------------------------------------------------------- arguments


def parse_host_port(text: str) -> tuple[str, int | None]:
    """Split HOST[:PORT]. IPv6 needs brackets to carry a port: `[::1]:8883`.

    A bare IPv6 address (`::1`) is accepted as a host without a port.

    Raises:
        UsageError: empty host, unbalanced brackets or a port outside 1-65535.
    """
    text = text.strip()
    host: str
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"{text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a name, or a bare IPv6 address
    if not host:
        raise UsageError(f"{text!r}: no host given")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def request_from_args(
    host_port: str | None,
    protocol: str | None,
    connection_string: str | None,
    ca: str | None,
    servername: str | None,
    timeout: float | None,
    gateway: GatewayConfig,
    default_cas: Sequence[str],
    drop_dir: str,
    *,
    connection_string_file: str | None = None,
    warn_days: int = 30,
) -> VerifyRequest:
    """Build a VerifyRequest from command-line values, filling gaps from `gateway:` config.

    The host comes from, in order: HOST[:PORT]; GatewayHostName in the connection
    string (--connection-string, --connection-string-file, or, when no HOST was
    given, gateway.connection_string_file); gateway.host. A connection string
    without GatewayHostName is not an error here: verify reports it as the cause.

    The port comes from HOST:PORT, else gateway.port (unless --protocol was given),
    else the protocol's port. Trust is --ca alone, or else `default_cas`.

    Raises:
        UsageError: no host can be determined, a bad HOST:PORT, protocol,
            timeout, or a --ca file that does not exist.
        ConnectionStringError: the connection string is malformed or unreadable.
    """
    chosen_protocol = protocol or (gateway.protocols[0] if gateway.protocols else DEFAULT_PROTOCOL)
    if chosen_protocol not in PROTOCOL_PORTS:
        choices = ", ".join(PROTOCOL_PORTS)
        raise UsageError(f"unknown protocol {chosen_protocol!r} (choose from {choices})")

    parsed: ConnectionString | None = None
    source: str | None = None
    if connection_string is not None:
        source = "--connection-string"
        parsed = parse_connection_string(connection_string, source)
    elif connection_string_file is not None:
        source = connection_string_file
        parsed = parse_connection_string(_read_secret_file(source), source)
    elif host_port is None and gateway.host is None and gateway.connection_string_file:
        source = gateway.connection_string_file
        parsed = parse_connection_string(_read_secret_file(source), source)

    host: str | None = None
    port: int | None = None
    from_config = False
    if host_port is not None:
        host, port = parse_host_port(host_port)
    elif parsed is not None and parsed.gateway_host_name:
        host = parsed.gateway_host_name
    elif gateway.host:
        host, port = parse_host_port(gateway.host)
        from_config = True
    elif parsed is None:
        raise UsageError(
            "no gateway to verify: give HOST[:PORT] or a connection string with "
            "GatewayHostName, or set gateway.host or gateway.connection_string_file "
            "in the configuration"
        )
    if port is None:
        use_config_port = protocol is None and gateway.port is not None
        port = gateway.port if use_config_port and gateway.port else PROTOCOL_PORTS[chosen_protocol]

    chosen_timeout = gateway.timeout if timeout is None else timeout
    if not chosen_timeout > 0:
        raise UsageError(f"the timeout must be more than 0 seconds, got {chosen_timeout}")

    if ca is not None:
        if not Path(ca).is_file():
            raise UsageError(f"--ca {ca}: no such file")
        ca_files: tuple[str, ...] = (ca,)
    else:
        ca_files = tuple(default_cas)

    return VerifyRequest(
        host=host,
        port=port,
        protocol=chosen_protocol,
        servername=servername or (gateway.servername if from_config else None),
        ca_files=ca_files,
        ca_explicit=ca is not None,
        drop_dir=drop_dir,
        timeout=float(chosen_timeout),
        connection_string=parsed,
        connection_string_source=source,
        warn_days=warn_days,
    )


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectionStringError(f"cannot read the file: {reason}", path) from None


# --------------------------------------------------------------------------- probes (I/O)


@dataclass(frozen=True)
class _Resolved:
    addresses: tuple[tuple[int, tuple[Any, ...]], ...] = ()  # (family, sockaddr)
    error: str | None = None
    literal: bool = False


@dataclass
class _Connected:
    sock: socket.socket | None
    address: str = ""
    elapsed_ms: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (address, kind, text)


@dataclass
class _Handshake:
    chain_der: list[bytes] = field(default_factory=list)
    verified_der: list[bytes] = field(default_factory=list)
    version: str | None = None
    cipher: str | None = None
    verify_code: int | None = None
    verify_message: str | None = None
    # "timeout", "eof", "not-tls", "reset" or "ssl" when the handshake itself failed.
    error: str | None = None
    error_text: str = ""
    first_bytes: bytes = b""
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class _Trust:
    context: ssl.SSLContext
    loaded: tuple[str, ...]
    problems: tuple[str, ...]
    anchors: tuple[str, ...]  # subjects of every trusted CA, RFC 4514


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _probe_dns(host: str, port: int, timeout: float) -> _Resolved:
    if _is_ip_literal(host):
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return _Resolved(addresses=tuple((i[0], i[4]) for i in info), literal=True)
    if _is_special_invalid(host):
        # RFC 6761 section 6.4: .invalid never resolves. Answer at once instead of
        # waiting for a resolver that might still try the network.
        return _Resolved(error="names under .invalid never resolve (RFC 6761)")
    # getaddrinfo() has no timeout of its own; run it in a daemon thread so a dead
    # resolver cannot hang the check past the user's --timeout.
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    worker = threading.Thread(target=lookup, name="edge-certd-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        return _Resolved(error=f"no answer from the resolver within {timeout:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        text = result.strerror if isinstance(result, OSError) and result.strerror else str(result)
        return _Resolved(error=text)
    seen: dict[tuple[Any, ...], int] = {}
    for family, _type, _proto, _name, sockaddr in result:
        seen.setdefault(tuple(sockaddr), family)
    return _Resolved(addresses=tuple((family, addr) for addr, family in seen.items()))


def _is_special_invalid(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "invalid" or name.endswith(".invalid")


def _probe_tcp(resolved: _Resolved, timeout: float) -> _Connected:
    result = _Connected(sock=None)
    for family, sockaddr in resolved.addresses:
        address = _format_sockaddr(family, sockaddr)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            result.failures.append((address, "timeout", f"timed out after {timeout:g} s"))
            continue
        except ConnectionRefusedError:
            sock.close()
            result.failures.append((address, "refused", "connection refused"))
            continue
        except OSError as exc:
            sock.close()
            result.failures.append((address, "error", exc.strerror or str(exc)))
            continue
        result.sock = sock
        result.address = address
        result.elapsed_ms = (time.monotonic() - started) * 1000
        break
    return result


def _load_trust(ca_files: Sequence[str]) -> _Trust:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Hostname is checked separately (see module docstring); CERT_REQUIRED stays on.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    loaded: list[str] = []
    problems: list[str] = []
    for path in ca_files:
        try:
            context.load_verify_locations(cafile=path)
        except FileNotFoundError:
            problems.append(f"{path}: not found")
        except ssl.SSLError:
            problems.append(f"{path}: no certificate could be read from it")
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
        else:
            loaded.append(path)
    anchors = []
    for der in context.get_ca_certs(binary_form=True):
        try:
            anchors.append(x509.load_der_x509_certificate(der).subject.rfc4514_string())
        except ValueError:
            continue
    return _Trust(context, tuple(loaded), tuple(problems), tuple(anchors))


def _probe_tls(
    sock: socket.socket, context: ssl.SSLContext, sni: str | None, timeout: float
) -> _Handshake:
    """Run one TLS handshake over `sock` through memory BIOs.

    Memory BIOs rather than wrap_socket() because they let us see the raw bytes
    a non-TLS server answers with, and put one deadline on the whole handshake.
    """
    result = _Handshake()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    except ValueError as exc:  # e.g. a servername OpenSSL refuses
        result.error, result.error_text = "ssl", str(exc)
        return result
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            tls.do_handshake()
            _flush(sock, outgoing)
            break
        except ssl.SSLWantReadError:
            try:
                _flush(sock, outgoing)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(65536)
            except TimeoutError:
                result.error = "timeout"
                result.error_text = f"no TLS answer within {timeout:g} s"
                break
            except OSError as exc:
                result.error, result.error_text = "reset", exc.strerror or str(exc)
                break
            if not data:
                incoming.write_eof()
            else:
                if len(result.first_bytes) < 64:
                    result.first_bytes += data[: 64 - len(result.first_bytes)]
                incoming.write(data)
        except ssl.SSLCertVerificationError as exc:
            result.verify_code = exc.verify_code
            result.verify_message = exc.verify_message
            _flush(sock, outgoing, quiet=True)  # deliver our alert, as a real client would
            break
        except ssl.SSLError as exc:
            closed = isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
            result.error = "eof" if closed else "ssl"
            result.error_text = exc.reason or str(exc)
            break
    result.elapsed_ms = (time.monotonic() - started) * 1000
    if result.error and result.first_bytes and result.first_bytes[0] not in _TLS_RECORD_TYPES:
        result.error = "not-tls"
    cipher = tls.cipher()
    if cipher:
        result.cipher, result.version = cipher[0], tls.version() or cipher[1]
    # get_unverified_chain() is public from Python 3.13; before that the same method
    # exists on the private _sslobj (added in 3.10, bpo-18233). It still answers after
    # a failed verification, which is exactly when the chain matters most.
    result.chain_der = _chain(tls, "get_unverified_chain")
    if result.verify_code is None and result.error is None:
        result.verified_der = _chain(tls, "get_verified_chain")
    return result


def _flush(sock: socket.socket, outgoing: ssl.MemoryBIO, quiet: bool = False) -> None:
    data = outgoing.read()
    if not data:
        return
    try:
        sock.sendall(data)
    except OSError:
        if not quiet:
            raise


def _chain(tls: ssl.SSLObject, method: str) -> list[bytes]:
    getter = getattr(tls, method, None) or getattr(getattr(tls, "_sslobj", None), method, None)
    if getter is None:
        return []
    try:
        certs = getter() or []
    except (ssl.SSLError, ValueError):
        return []
    out: list[bytes] = []
    for cert in certs:
        if isinstance(cert, bytes | bytearray):
            out.append(bytes(cert))
        else:  # _ssl.Certificate
            out.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out


def _probe_chain_unverified(resolved: _Resolved, sni: str | None, timeout: float) -> list[bytes]:
    """Second, non-verifying handshake, only if the first one yielded no chain."""
    connected = _probe_tcp(resolved, timeout)
    if connected.sock is None:
        return []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return _probe_tls(connected.sock, context, sni, timeout).chain_der
    finally:
        connected.sock.close()


# --------------------------------------------------------------------------- the check


def verify_gateway(request: VerifyRequest) -> VerifyReport:
    """Check that the gateway in `request` is reachable and trusted over TLS.

    Never raises for a network or certificate problem: those become failed steps
    and a diagnosis in the report.
    """
    now = dt.datetime.now(dt.UTC)
    steps: list[Step] = []
    diagnoses: list[Diagnosis] = []
    sni = request.expected_name if not _is_ip_literal(request.expected_name or "") else None

    def report(chain: tuple[CertInfo, ...] = (), verification: str | None = None) -> VerifyReport:
        done = {s.name for s in steps}
        for name in _STEP_TITLES:
            if name not in done and name != "connection_string":
                steps.append(Step(name, "skip", "not run: an earlier step failed"))
        order = list(_STEP_TITLES)
        steps.sort(key=lambda s: order.index(s.name))
        return VerifyReport(
            host=request.host,
            port=request.port,
            protocol=request.protocol,
            servername=sni,
            steps=tuple(steps),
            chain=chain,
            verification=verification,
            diagnosis=diagnoses[0] if diagnoses else None,
            checked_at=now,
        )

    if request.connection_string is not None:
        step, diag = _judge_connection_string(request)
        steps.append(step)
        diagnoses.extend(diag)
    if request.host is None:
        return report()

    resolved = _probe_dns(request.host, request.port, request.timeout)
    step, diag = _judge_dns(request, resolved)
    steps.append(step)
    diagnoses.extend(diag)
    if resolved.error:
        return report()

    connected = _probe_tcp(resolved, request.timeout)
    step, diag = _judge_tcp(request, connected)
    steps.append(step)
    diagnoses.extend(diag)
    if connected.sock is None:
        return report()

    trust = _load_trust(request.ca_files)
    try:
        shake = _probe_tls(connected.sock, trust.context, sni, request.timeout)
    finally:
        connected.sock.close()
    if shake.verify_code is not None and not shake.chain_der:
        shake.chain_der = _probe_chain_unverified(resolved, sni, request.timeout)

    step, diag = _judge_tls(request, shake)
    steps.append(step)
    diagnoses.extend(diag)
    if step.status == "fail":
        return report()

    chain = tuple(_cert_info(der) for der in shake.chain_der)
    steps.append(_judge_chain(chain))
    expiry_step, expiry_diag = _judge_expiry(chain, now, request.warn_days)
    # A wrong clock or an expired certificate explains a verification failure better
    # than OpenSSL's first complaint does, so those diagnoses come first.
    diagnoses.extend(expiry_diag)
    verify_step, verification, verify_diag = _judge_verification(request, shake, chain, trust)
    steps.append(verify_step)
    diagnoses.extend(verify_diag)
    host_step, host_diag = _judge_hostname(request, chain)
    steps.append(host_step)
    diagnoses.extend(host_diag)
    steps.append(expiry_step)
    return report(chain, verification)


# --------------------------------------------------------------------------- judging (pure)

_Judged = tuple[Step, list[Diagnosis]]


def _judge_connection_string(request: VerifyRequest) -> _Judged:
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


def _judge_dns(request: VerifyRequest, resolved: _Resolved) -> _Judged:
    host = request.host or ""
    if resolved.error:
        return Step("dns", "fail", f"{host}: {resolved.error}"), [
            Diagnosis(
                "dns",
                f"the name {host} does not resolve: {resolved.error}",
                f"add a DNS record for {host}, or a line '<gateway IP> {host}' to /etc/hosts "
                "on this device",
            )
        ]
    shown = ", ".join(_sockaddr_host(addr) for _family, addr in resolved.addresses)
    if resolved.literal:
        return Step("dns", "pass", f"{host} is an IP address, no lookup needed"), []
    return Step("dns", "pass", f"{host} -> {shown}"), []


def _judge_tcp(request: VerifyRequest, connected: _Connected) -> _Judged:
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
            f"the port) and that no firewall rejects it; IoT Edge needs {_FIREWALL_PORTS}"
        )
        cause = "connection-refused"
    elif "timeout" in kinds:
        what = f"connection timed out after {request.timeout:g} s"
        fix = (
            f"check the firewall between this device and the gateway for port {port} "
            f"(IoT Edge needs {_FIREWALL_PORTS}) and that the gateway is up"
        )
        cause = "connection-timeout"
    else:
        what = "; ".join(text for _addr, _kind, text in connected.failures) or "no address"
        fix = f"check the network route to the gateway and the firewall for {_FIREWALL_PORTS}"
        cause = "connection-failed"
    return Step("tcp", "fail", f"{what} on port {port}", details), [
        Diagnosis(cause, f"{what} on port {port} at {request.host}", fix)
    ]


def _judge_tls(request: VerifyRequest, shake: _Handshake) -> _Judged:
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
                f"point the device at the gateway's TLS port ({_FIREWALL_PORTS}); "
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


def _judge_chain(chain: tuple[CertInfo, ...]) -> Step:
    if not chain:
        return Step("chain", "fail", "the server presented no certificate")
    details: list[str] = []
    for depth, cert in enumerate(chain):
        details.append(f"{depth} subject: {cert.subject}")
        details.append(f"  issuer:  {cert.issuer}")
        details.append(f"  valid:   {_when(cert.not_before)} to {_when(cert.not_after)}")
        if cert.san:
            details.append(f"  SAN:     {', '.join(cert.san)}")
    count = f"{len(chain)} certificate{'s' if len(chain) != 1 else ''}"
    return Step("chain", "pass", count, tuple(details))


def _judge_verification(
    request: VerifyRequest, shake: _Handshake, chain: tuple[CertInfo, ...], trust: _Trust
) -> tuple[Step, str, list[Diagnosis]]:
    trusted_from = ", ".join(trust.loaded) or "nothing"
    details = [f"trusted CAs from: {trusted_from}", *trust.problems]
    if shake.verify_code is None:
        line = "Verification: OK"
        if shake.verified_der:
            anchor = _cert_info(shake.verified_der[-1])
            details.append(f"anchored at: {anchor.subject}")
        summary = "the chain leads to a trusted CA"
        return Step("verification", "pass", summary, tuple(details)), line, []
    reason = shake.verify_message or f"error {shake.verify_code}"
    line = f"Verification error: {reason}"
    step = Step("verification", "fail", f"the chain does not verify: {reason}", tuple(details))
    code = shake.verify_code
    if code in _NOT_YET_VALID_CODES or code in _EXPIRED_CODES:
        return step, line, []  # _judge_expiry names the certificate and the clock
    if not trust.loaded:
        return (
            step,
            line,
            [
                Diagnosis(
                    "no-trust",
                    "no trusted CA could be loaded, so no chain can verify: "
                    + "; ".join(trust.problems),
                    "run `edge-certd sync` so edge-certd writes its roots, or pass --ca FILE",
                )
            ],
        )
    if code in _UNTRUSTED_CODES and chain:
        return step, line, [_untrusted_root(request, chain, trust)]
    return (
        step,
        line,
        [
            Diagnosis(
                "verification-failed",
                f"the gateway's certificate chain did not verify: {reason}",
                "reissue the gateway's certificates (iotedge check names the broken one)",
            )
        ],
    )


def _untrusted_root(
    request: VerifyRequest, chain: tuple[CertInfo, ...], trust: _Trust
) -> Diagnosis:
    top = chain[-1]
    needed = top.subject if top.self_signed else top.issuer
    if top.self_signed:
        message = f"the gateway sent its root CA {needed}, but this device does not trust it"
    else:
        message = (
            f"the chain the gateway presented ends at {top.subject}, whose issuer "
            f"{needed} is not a trusted CA on this device"
        )
    if request.ca_explicit:
        fix = f"add the root CA {needed} (PEM) to {', '.join(request.ca_files)}"
    else:
        fix = (
            f"copy the root CA certificate {needed} (PEM, e.g. the IoT Edge "
            f"azure-iot-test-only.root.ca.cert.pem or your own root) into the drop directory "
            f"{request.drop_dir}; edge-certd installs it"
        )
    if trust.problems:
        # A missing edge-roots.pem usually means sync has not run yet; say so.
        fix += "; note that these trust files could not be loaded: " + "; ".join(trust.problems)
    return Diagnosis("untrusted-root", message, fix)


def _judge_hostname(request: VerifyRequest, chain: tuple[CertInfo, ...]) -> _Judged:
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
    matched = _match_hostname(name, leaf)
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


def _match_hostname(name: str, cert: CertInfo) -> str | None:
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


def _judge_expiry(chain: tuple[CertInfo, ...], now: dt.datetime, warn_days: int) -> _Judged:
    if not chain:
        return Step("expiry", "skip", "no certificate to check"), []
    clock = _when(now)
    future = [c for c in chain if now < c.not_before]
    expired = [c for c in chain if now > c.not_after]
    soon = [c for c in chain if now <= c.not_after < now + dt.timedelta(days=warn_days)]
    if future:
        cert = future[0]
        return Step("expiry", "fail", f"{cert.subject} is not valid yet"), [
            Diagnosis(
                "not-yet-valid",
                f"the certificate {cert.subject} is not valid until {_when(cert.not_before)}, "
                f"and this device's clock reads {clock}",
                "the device clock is likely wrong: set it (enable NTP, e.g. "
                "`timedatectl set-ntp true`, or fix the RTC); if the clock is right, the "
                "certificate was issued with a start date in the future and must be reissued",
            )
        ]
    if expired:
        cert = expired[0]
        return Step("expiry", "fail", f"{cert.subject} expired on {_when(cert.not_after)}"), [
            Diagnosis(
                "expired",
                f"the certificate {cert.subject} expired on {_when(cert.not_after)} "
                f"(this device's clock reads {clock})",
                "renew the gateway's certificate (IoT Edge renews its edge CA and server "
                "certificates itself; restart it with `iotedge system restart` if it has not)",
            )
        ]
    if soon:
        details = tuple(f"{c.subject} expires {_when(c.not_after)}" for c in soon)
        return Step("expiry", "warn", f"expires within {warn_days} days", details), []
    return Step("expiry", "pass", f"every certificate is valid for more than {warn_days} days"), []


# --------------------------------------------------------------------------- helpers (pure)


def _cert_info(der: bytes) -> CertInfo:
    cert = x509.load_der_x509_certificate(der)
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except (x509.ExtensionNotFound, ValueError):
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=_utc(cert, "not_valid_before"),
        not_after=_utc(cert, "not_valid_after"),
        sha256=hashlib.sha256(der).hexdigest(),
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
    )


def _utc(cert: x509.Certificate, attr: str) -> dt.datetime:
    # cryptography 42 added the *_utc properties and deprecated the naive ones;
    # Debian 12's cryptography 38 has only the naive (UTC) ones.
    aware = getattr(cert, attr + "_utc", None)
    if isinstance(aware, dt.datetime):
        return aware
    naive: dt.datetime = getattr(cert, attr)
    return naive.replace(tzinfo=dt.UTC)


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _preview(data: bytes) -> str:
    text = data[:40].decode("ascii", "replace")
    printable = "".join(ch if ch.isprintable() else "." for ch in text).strip()
    return repr(printable) if printable else f"{len(data)} non-text bytes"


def _sockaddr_host(sockaddr: tuple[Any, ...]) -> str:
    return str(sockaddr[0])


def _format_sockaddr(family: int, sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


# --------------------------------------------------------------------------- output


def render_text(report: VerifyReport) -> str:
    """The human-readable report: one line per step, then the diagnosis and fix."""
    target = f"{report.host}:{report.port}" if report.host else "(no gateway host)"
    if report.host and ":" in report.host:
        target = f"[{report.host}]:{report.port}"
    sni = f", SNI {report.servername}" if report.servername else ""
    lines = [f"Verifying {target} ({report.protocol}{sni})"]
    for step in report.steps:
        lines.append(f"  [{step.status}] {_STEP_TITLES.get(step.name, step.name)}: {step.summary}")
        lines.extend(f"         {detail}" for detail in step.details)
    if report.verification:
        lines.append(report.verification)
    if report.diagnosis:
        lines.append(f"Diagnosis: {report.diagnosis.message}")
        lines.append(f"Fix: {report.diagnosis.fix}")
    lines.append("Result: OK" if report.ok else "Result: FAILED")
    return "\n".join(lines) + "\n"


def report_to_json(report: VerifyReport) -> dict[str, Any]:
    """The same result as a JSON-ready dict. Holds no secrets (the connection string
    appears only in redacted form, in the connection_string step)."""
    return {
        "ok": report.ok,
        "host": report.host,
        "port": report.port,
        "protocol": report.protocol,
        "servername": report.servername,
        "checked_at": _when(report.checked_at),
        "steps": [
            {"name": s.name, "status": s.status, "summary": s.summary, "details": list(s.details)}
            for s in report.steps
        ],
        "chain": [
            {
                "subject": c.subject,
                "issuer": c.issuer,
                "not_before": _when(c.not_before),
                "not_after": _when(c.not_after),
                "sha256": c.sha256,
                "san": list(c.san),
                "is_ca": c.is_ca,
            }
            for c in report.chain
        ],
        "verification": report.verification,
        "diagnosis": (
            None
            if report.diagnosis is None
            else {
                "cause": report.diagnosis.cause,
                "message": report.diagnosis.message,
                "fix": report.diagnosis.fix,
            }
        ),
    }
