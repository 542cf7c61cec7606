"""`edge-certd verify`: can this device reach its gateway over TLS, and if not, why?

The check runs as a fixed sequence of steps (connection string, DNS, TCP, TLS
handshake, presented chain, chain verification, hostname, expiry). Each step
records pass / fail / warn / skip with its details, and the report carries ONE
diagnosis: the most fundamental failure, with the fix a person should apply.
A warning (a certificate expiring within warn_days) never fails the check.

This module turns arguments and configuration into a request and runs the steps
in order. The pieces live beside it:

- `verify_model`: the request, step and report values;
- `verify_net`: the side effects (DNS, sockets, reading trust files);
- `verify_judge`: the pure judgement of what the probes saw;
- `verify_render`: text and JSON output.

Chain verification is OpenSSL's own (via `ssl`), so its verdict and wording are
exactly what `openssl s_client` prints and what the device's TLS stack will say.
The hostname check is done here rather than by OpenSSL so that a wrong name and
an untrusted chain are reported separately instead of the first one hiding the
second.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from edge_certd.config import Config, GatewayConfig
from edge_certd.core.errors import UsageError
from edge_certd.diagnose.connstr import ConnectionString, ConnectionStringError, parse_connection_string
from edge_certd.diagnose.verify.judge import (
    judge_chain,
    judge_connection_string,
    judge_dns,
    judge_expiry,
    judge_hostname,
    judge_tcp,
    judge_tls,
    judge_verification,
)
from edge_certd.diagnose.verify.model import (
    DEFAULT_PROTOCOL,
    PROTOCOL_PORTS,
    STEP_TITLES,
    CertInfo,
    Diagnosis,
    Step,
    VerifyReport,
    VerifyRequest,
    cert_info,
    is_ip_literal,
)
from edge_certd.diagnose.verify.net import (
    load_trust,
    probe_chain_unverified,
    probe_dns,
    probe_tcp,
    probe_tls,
)
from edge_certd.diagnose.verify.render import render_text, report_to_json

__all__ = [
    "PROTOCOL_PORTS",
    "CertInfo",
    "Diagnosis",
    "Step",
    "VerifyReport",
    "VerifyRequest",
    "default_trust_files",
    "parse_host_port",
    "render_text",
    "report_to_json",
    "request_for_config",
    "request_from_args",
    "verify_gateway",
]


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


def default_trust_files(config: Config) -> list[str]:
    """What edge-certd installed: its own roots plus the system bundle."""
    return [os.path.join(config.bundles.dir, "edge-roots.pem"), config.trust_store.system_bundle]


def request_for_config(
    config: Config,
    *,
    target: str | None = None,
    protocol: str | None = None,
    connection_string: str | None = None,
    connection_string_file: str | None = None,
    ca: str | None = None,
    servername: str | None = None,
    timeout: float | None = None,
) -> VerifyRequest:
    """The request `edge-certd verify` makes; with no keywords, the no-argument one
    (the gateway from the `gateway:` section), which is also what `doctor` checks.

    Raises:
        UsageError: as request_from_args, including "no gateway to verify".
        ConnectionStringError: the connection string is malformed or unreadable.
    """
    return request_from_args(
        target,
        protocol,
        connection_string,
        ca,
        servername,
        timeout,
        config.gateway,
        default_trust_files(config),
        config.drop_dir,
        connection_string_file=connection_string_file,
        warn_days=max(config.expiry.warn_days, default=30),
    )


# --------------------------------------------------------------------------- the check


def verify_gateway(request: VerifyRequest) -> VerifyReport:
    """Check that the gateway in `request` is reachable and trusted over TLS.

    Never raises for a network or certificate problem: those become failed steps
    and a diagnosis in the report.
    """
    now = dt.datetime.now(dt.UTC)
    steps: list[Step] = []
    diagnoses: list[Diagnosis] = []
    sni = request.expected_name if not is_ip_literal(request.expected_name or "") else None

    def report(chain: tuple[CertInfo, ...] = (), verification: str | None = None) -> VerifyReport:
        done = {s.name for s in steps}
        for name in STEP_TITLES:
            if name not in done and name != "connection_string":
                steps.append(Step(name, "skip", "not run: an earlier step failed"))
        order = list(STEP_TITLES)
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
        step, diag = judge_connection_string(request)
        steps.append(step)
        diagnoses.extend(diag)
    if request.host is None:
        return report()

    resolved = probe_dns(request.host, request.port, request.timeout)
    step, diag = judge_dns(request, resolved)
    steps.append(step)
    diagnoses.extend(diag)
    if resolved.error:
        return report()

    connected = probe_tcp(resolved, request.timeout)
    step, diag = judge_tcp(request, connected)
    steps.append(step)
    diagnoses.extend(diag)
    if connected.sock is None:
        return report()

    trust = load_trust(request.ca_files)
    try:
        shake = probe_tls(connected.sock, trust.context, sni, request.timeout)
    finally:
        connected.sock.close()
    if shake.verify_code is not None and not shake.chain_der:
        shake.chain_der = probe_chain_unverified(resolved, sni, request.timeout)

    step, diag = judge_tls(request, shake)
    steps.append(step)
    diagnoses.extend(diag)
    if step.status == "fail":
        return report()

    chain = tuple(cert_info(der) for der in shake.chain_der)
    steps.append(judge_chain(chain))
    expiry_step, expiry_diag = judge_expiry(chain, now, request.warn_days)
    # A wrong clock or an expired certificate explains a verification failure better
    # than OpenSSL's first complaint does, so those diagnoses come first.
    diagnoses.extend(expiry_diag)
    verify_step, verification, verify_diag = judge_verification(request, shake, chain, trust)
    steps.append(verify_step)
    diagnoses.extend(verify_diag)
    host_step, host_diag = judge_hostname(request, chain)
    steps.append(host_step)
    diagnoses.extend(host_diag)
    steps.append(expiry_step)
    return report(chain, verification)
