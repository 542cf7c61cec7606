"""`edge-certd verify`: argparse values in, report out, exit code back to the CLI."""

from __future__ import annotations

import argparse
import json

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.core.pem import iter_pem_ders
from edge_certd.core.schema import SCHEMA_VERSIONS
from edge_certd.diagnose.verify.check import verify_chain, verify_gateway
from edge_certd.diagnose.verify.model import PROTOCOL_PORTS, VerifyReport, VerifyRequest
from edge_certd.diagnose.verify.render import render_text, report_to_json
from edge_certd.diagnose.verify.request import (
    ca_file_store,
    default_stores,
    parse_host_port,
    request_for_config,
)
from edge_certd.store.fsutil import read_bytes

# A gateway's chain is a few certificates; a file far larger is not one.
MAX_CHAIN_FILE = 1024 * 1024


def run_verify(config: Config, args: argparse.Namespace) -> int:
    """Returns 0 when nothing failed (warnings allowed), 1 otherwise.

    Raises:
        UsageError: bad arguments, or no gateway given nor configured.
        ConnectionStringError: a malformed or unreadable connection string.
    """
    if args.chain:
        return _print(_check_chain_file(config, args), as_json=args.json)
    request = request_for_config(
        config,
        target=args.target,
        protocol=args.protocol,
        connection_string=args.connection_string,
        connection_string_file=args.connection_string_file,
        ca=args.ca,
        servername=args.servername,
        timeout=args.timeout,
    )
    return _print(verify_gateway(request), as_json=args.json)


def _print(report: VerifyReport, *, as_json: bool) -> int:
    if as_json:
        doc = {"schema_version": SCHEMA_VERSIONS["verify"], **report_to_json(report)}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(render_text(report), end="")
    return 0 if report.ok else 1


def _check_chain_file(config: Config, args: argparse.Namespace) -> VerifyReport:
    """`verify --chain FILE`: a planned chain against this device's stores, offline.

    Raises:
        UsageError: the file is missing, too large or holds no PEM certificate.
    """
    path: str = args.chain
    try:
        data = read_bytes(path)
    except OSError as exc:
        raise UsageError(f"--chain {path}: cannot be read ({exc.strerror or exc})") from None
    if data is None:
        raise UsageError(f"--chain {path}: no such file")
    if len(data) > MAX_CHAIN_FILE:
        raise UsageError(f"--chain {path}: larger than {MAX_CHAIN_FILE} bytes; a chain is a few certificates")
    chain = list(iter_pem_ders(data))[:10]
    if not chain:
        raise UsageError(
            f"--chain {path}: no PEM certificate in it; give the chain the gateway will serve, "
            "server certificate first (PEM)"
        )
    # The name to check: --servername, else HOST, else the configured gateway; none is fine.
    host, port = parse_host_port(args.target) if args.target else (None, None)
    if host is None and config.gateway.host:
        host, port = parse_host_port(config.gateway.host)
    protocol = args.protocol or (config.gateway.protocols or ["mqtts"])[0]
    stores = (ca_file_store(args.ca),) if args.ca else tuple(default_stores(config))
    request = VerifyRequest(
        host=host,
        port=port or PROTOCOL_PORTS[protocol],
        protocol=protocol,
        servername=args.servername,
        stores=stores,
        drop_dir=config.drop_dir,
        warn_days=max(config.expiry.warn_days, default=30),
    )
    return verify_chain(request, chain)
