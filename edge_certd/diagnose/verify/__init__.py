"""`edge-certd verify`: can this device reach its gateway over TLS, and if not, why?

The check runs as a fixed sequence of steps (connection string, DNS, TCP, TLS
handshake, presented chain, one line per trust store, hostname, expiry). Each step
records pass / fail / warn / skip with its details, and the report carries ONE
diagnosis: the most fundamental failure, with the fix a person should apply.
A warning (a certificate expiring within warn_days) never fails the check.

The trust stores are what the runtimes on the device use, each checked on its own
(`default_stores`): the system store as OpenSSL's default paths see it, edge-roots.pem
alone (what the Azure IoT SDKs' `ca` option trusts), ca-bundle.pem, and the Java
truststore when one is written. Every store must trust the chain: a runtime that
reads a store which lacks the root cannot connect, so its line fails the check.
`--ca FILE` replaces them all with that one file.

This module turns arguments and configuration into a request and runs the steps
in order. The pieces live beside it:

- `model`: the request, step and report values;
- `net`: the network side effects (DNS, TCP, one TLS handshake that collects the chain);
- `anchors`: reading each store and verifying the chain against it (`openssl verify`);
- `judge`: the pure judgement of what the probes saw;
- `render`: text and JSON output.

Chain verification is OpenSSL's own (`openssl verify`, see `anchors`), so its verdict and
wording are what the device's TLS stacks say. The hostname is checked once, here, so
that a wrong name and an untrusted chain are reported separately instead of the first
hiding the second; the `Verification:` line joins them into one verdict.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from edge_certd.config import Config, GatewayConfig
from edge_certd.core.errors import UsageError
from edge_certd.diagnose.connstr import ConnectionString, ConnectionStringError, parse_connection_string
from edge_certd.diagnose.verify import anchors
from edge_certd.diagnose.verify.judge import (
    judge_chain,
    judge_connection_string,
    judge_dns,
    judge_expiry,
    judge_hostname,
    judge_store,
    judge_tcp,
    judge_tls,
    verification_line,
)
from edge_certd.diagnose.verify.model import (
    DEFAULT_PROTOCOL,
    PROTOCOL_PORTS,
    STEP_TITLES,
    CertInfo,
    Diagnosis,
    RemovedRoot,
    Step,
    StoreCheck,
    TrustStore,
    VerifyReport,
    VerifyRequest,
    cert_info,
    is_ip_literal,
)
from edge_certd.diagnose.verify.net import probe_dns, probe_tcp, probe_tls
from edge_certd.diagnose.verify.render import render_text, report_to_json
from edge_certd.store.state import StatePaths, load_blocked, load_report
from edge_certd.targets.bundles import RuntimeBundles
from edge_certd.targets.java import JavaTruststore
from edge_certd.targets.registry import followers

__all__ = [
    "PROTOCOL_PORTS",
    "CertInfo",
    "Diagnosis",
    "Step",
    "StoreCheck",
    "TrustStore",
    "VerifyReport",
    "VerifyRequest",
    "ca_file_store",
    "default_stores",
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
    default_stores: Sequence[TrustStore],
    drop_dir: str,
    *,
    connection_string_file: str | None = None,
    warn_days: int = 30,
    removed: tuple[RemovedRoot, ...] = (),
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
        stores: tuple[TrustStore, ...] = (ca_file_store(ca),)
    else:
        stores = tuple(default_stores)

    return VerifyRequest(
        host=host,
        port=port,
        protocol=chosen_protocol,
        servername=servername or (gateway.servername if from_config else None),
        stores=stores,
        drop_dir=drop_dir,
        timeout=float(chosen_timeout),
        connection_string=parsed,
        connection_string_source=source,
        warn_days=warn_days,
        removed=removed,
    )


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectionStringError(f"cannot read the file: {reason}", path) from None


def ca_file_store(path: str) -> TrustStore:
    """--ca FILE: trust only the certificates in this PEM file."""
    return TrustStore(key="ca", title="--ca file", used_by="this check only", path=path)


def default_stores(config: Config) -> list[TrustStore]:
    """The stores the device's runtimes use, each checked on its own, as the targets
    this configuration enables write them (README, "Runtimes: what to point them at")."""
    system_bundle = config.trust_store.system_bundle
    # OpenSSL's default paths are a CA file and the hashed directory beside it
    # (/usr/lib/ssl/cert.pem -> /etc/ssl/certs/ca-certificates.crt, and /etc/ssl/certs);
    # update-ca-certificates writes both.
    stores = [
        TrustStore(
            key="system",
            title="system store",
            used_by="runtimes on OpenSSL's default paths (Python ssl, curl, Go, .NET, Debian's Node.js)",
            path=system_bundle,
            directory=os.path.dirname(system_bundle) or None,
        )
    ]
    for target in followers(config):
        if isinstance(target, RuntimeBundles):
            stores.append(
                TrustStore(
                    key="edge-roots",
                    title="edge-roots.pem",
                    used_by="the Azure IoT SDKs' ca / server_verification_cert / OPTION_TRUSTED_CERT "
                    "and mosquitto --cafile",
                    path=target.edge_roots,
                )
            )
            stores.append(
                TrustStore(
                    key="ca-bundle",
                    title="ca-bundle.pem",
                    used_by="REQUESTS_CA_BUNDLE, SSL_CERT_FILE and CURL_CA_BUNDLE",
                    path=target.ca_bundle,
                )
            )
        elif isinstance(target, JavaTruststore) and target.path and target.store_type in ("jks", "pkcs12"):
            stores.append(
                TrustStore(
                    key="java",
                    title="Java truststore",
                    used_by="Java started with $EDGE_CERTD_JAVA_OPTS",
                    path=target.path,
                    kind="jks" if target.store_type == "jks" else "pkcs12",
                    password=target.password,
                )
            )
    return stores


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
        default_stores(config),
        config.drop_dir,
        connection_string_file=connection_string_file,
        warn_days=max(config.expiry.warn_days, default=30),
        removed=removed_roots(config),
    )


def removed_roots(config: Config) -> tuple[RemovedRoot, ...]:
    """The CAs that stay removed (`edge-certd remove`), as the last sync's status.json names
    them, less any `edge-certd add` has brought back since. Empty when neither is readable."""
    paths = StatePaths(config.state_dir)
    blocked = load_blocked(paths)
    listed = load_report(paths.status).get("removed_by_operator")
    if not isinstance(listed, list):
        return ()
    found = []
    for item in listed:
        if isinstance(item, dict) and item.get("sha256") in blocked and isinstance(item.get("subject"), str):
            found.append(RemovedRoot(sha256=str(item["sha256"]), subject=item["subject"]))
    return tuple(found)


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

    checked: list[tuple[TrustStore, StoreCheck]] = []

    def base(step: Step) -> str:
        return step.name.split(":", 1)[0]

    def report(chain: tuple[CertInfo, ...] = (), verification: str | None = None) -> VerifyReport:
        done = {base(s) for s in steps}
        for name in STEP_TITLES:
            if name not in done and name != "connection_string":
                steps.append(Step(name, "skip", "not run: an earlier step failed"))
        order = list(STEP_TITLES)
        steps.sort(key=lambda s: order.index(base(s)))  # stable: the stores keep their order
        return VerifyReport(
            host=request.host,
            port=request.port,
            protocol=request.protocol,
            servername=sni,
            steps=tuple(steps),
            chain=chain,
            verification=verification,
            stores=tuple(checked),
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

    try:
        shake = probe_tls(connected.sock, sni, request.timeout)
    finally:
        connected.sock.close()

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
    if chain:
        openssl = anchors.find_openssl()
        checked.extend(
            (store, anchors.check_store(store, shake.chain_der, openssl)) for store in request.stores
        )
    for store, check in checked:
        elsewhere = [other for other, result in checked if result.verified and other is not store]
        store_step, store_diag = judge_store(request, store, check, chain, elsewhere)
        steps.append(store_step)
        diagnoses.extend(store_diag)
    if chain and not checked:
        steps.append(Step("store", "fail", "no trust store to check the chain against"))
        diagnoses.append(
            Diagnosis(
                "no-trust",
                "no trust store was given, so the chain cannot be verified",
                "pass --ca FILE with the gateway's root CA",
            )
        )
    host_step, host_diag = judge_hostname(request, chain)
    steps.append(host_step)
    diagnoses.extend(host_diag)
    steps.append(expiry_step)
    verification = verification_line(checked, host_step) if chain else None
    return report(chain, verification)
