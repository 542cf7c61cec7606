"""What `verify` checks: HOST[:PORT] and the connection string parsed, the gateway taken from
the configuration where the arguments leave gaps, and the trust stores the device's runtimes
use, each checked on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_certd.config import Config, GatewayConfig
from edge_certd.core.errors import UsageError
from edge_certd.diagnose.connstr import ConnectionString, ConnectionStringError, parse_connection_string
from edge_certd.diagnose.verify.model import (
    DEFAULT_PROTOCOL,
    PROTOCOL_PORTS,
    RemovedRoot,
    TrustStore,
    VerifyRequest,
)
from edge_certd.store.fsutil import ReadError, read_bounded
from edge_certd.store.state import StatePaths, load_blocked, load_report
from edge_certd.targets.registry import enabled_targets


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


# A connection string is one line of a few hundred characters.
SECRET_FILE_LIMIT = 64 * 1024


def _read_secret_file(path: str) -> str:
    # Read as every outside file is: no link followed, no FIFO waited on, bounded.
    try:
        return read_bounded(path, SECRET_FILE_LIMIT).decode("utf-8")
    except ReadError as exc:
        raise ConnectionStringError(f"cannot read the file: it {exc.reason}", path) from None
    except UnicodeDecodeError as exc:
        raise ConnectionStringError(
            f"cannot read the file: not UTF-8 text (byte {exc.start})", path
        ) from None


def ca_file_store(path: str) -> TrustStore:
    """--ca FILE: trust only the certificates in this PEM file."""
    return TrustStore(key="ca", title="--ca file", used_by="this check only", path=path)


def default_stores(config: Config) -> list[TrustStore]:
    """The stores the device's runtimes use, each checked on its own, as the targets
    this configuration enables write them (README, "Runtimes: what to point them at")."""
    return [store for target in enabled_targets(config) for store in target.stores()]


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
