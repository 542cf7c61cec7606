"""`edge-certd verify`: argparse values in, report out, exit code back to the CLI."""

from __future__ import annotations

import argparse
import json
import os

from edge_certd.config import Config
from edge_certd.verify import render_text, report_to_json, request_from_args, verify_gateway


def default_trust_files(config: Config) -> list[str]:
    """What edge-certd installed: its own roots plus the system bundle."""
    return [os.path.join(config.bundles.dir, "edge-roots.pem"), config.trust_store.system_bundle]


def run_verify(config: Config, args: argparse.Namespace) -> int:
    """Returns 0 when every step passed, 1 otherwise. Raises UsageError for bad arguments."""
    request = request_from_args(
        args.target, args.protocol, args.connection_string, args.ca, args.servername,
        args.timeout, config.gateway, default_trust_files(config), config.drop_dir,
        connection_string_file=args.connection_string_file,
        warn_days=max(config.expiry.warn_days, default=30))
    report = verify_gateway(request)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, ensure_ascii=False))
    else:
        print(render_text(report), end="")
    return 0 if report.ok else 1
