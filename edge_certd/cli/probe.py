"""`edge-certd probe`: one check of the gateway, written where the daemon reads it."""

from __future__ import annotations

import argparse
import json
import os

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.core.text import printable
from edge_certd.diagnose.watch import (
    MAX_PLAN_BYTES,
    PLAN_NAME,
    plan_for_config,
    requests_from_plan,
    run_probe,
)
from edge_certd.store.fsutil import read_bytes


def run_probe_command(config: Config, args: argparse.Namespace) -> int:
    """0 when the result was written (whatever it says of the gateway), 2 when there is
    nothing to probe.

    Raises:
        UsageError: no gateway configured, or a plan that is not edge-certd's.
        WriteError: the result cannot be written.
    """
    plan_path = args.plan or os.path.join(config.state_dir, PLAN_NAME)
    data = read_bytes(plan_path)
    if data is not None:
        if len(data) > MAX_PLAN_BYTES:
            raise UsageError(f"{plan_path}: larger than {MAX_PLAN_BYTES} bytes; not a gateway plan")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise UsageError(f"{plan_path}: not JSON") from None
        if not isinstance(doc, dict):
            raise UsageError(f"{plan_path}: not a gateway plan")
    else:
        doc = plan_for_config(config)
        if doc is None:
            raise UsageError("no gateway to probe: set gateway.host or gateway.connection_string_file")
    output = args.output or config.gateway.result_file
    for probe in run_probe(requests_from_plan(doc), output):
        print(f"{probe.gateway}: {probe.state}" + (f" ({printable(probe.cause, 40)})" if probe.cause else ""))
    return 0
