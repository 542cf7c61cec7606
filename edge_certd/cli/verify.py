"""`edge-certd verify`: argparse values in, report out, exit code back to the CLI."""

from __future__ import annotations

import argparse
import json

from edge_certd.config import Config
from edge_certd.core.schema import SCHEMA_VERSIONS
from edge_certd.diagnose.verify import render_text, report_to_json, request_for_config, verify_gateway


def run_verify(config: Config, args: argparse.Namespace) -> int:
    """Returns 0 when nothing failed (warnings allowed), 1 otherwise.

    Raises:
        UsageError: bad arguments, or no gateway given nor configured.
        ConnectionStringError: a malformed or unreadable connection string.
    """
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
    report = verify_gateway(request)
    if args.json:
        doc = {"schema_version": SCHEMA_VERSIONS["verify"], **report_to_json(report)}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(render_text(report), end="")
    return 0 if report.ok else 1
