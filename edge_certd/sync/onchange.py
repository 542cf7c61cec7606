"""After trust changed: restart the units that read CAs only at start, run the commands."""

from __future__ import annotations

import logging
import subprocess

from edge_certd.config import OnChangeConfig
from edge_certd.sync import journal as events


def run_on_change(on_change: OnChangeConfig) -> None:
    """Run `systemctl try-restart` for restart_units, then each command.

    Failures are logged, never raised: trust is already in place, and a unit that fails to
    restart must not make the next sync undo it.
    """
    runs = []
    if on_change.restart_units:
        runs.append([*on_change.systemctl, "try-restart", *on_change.restart_units])
    runs.extend(list(cmd) for cmd in on_change.commands)
    for argv in runs:
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=on_change.timeout, check=False, stdin=subprocess.DEVNULL
            )
            if proc.returncode != 0:
                tail = proc.stderr.decode(errors="replace").strip()[-300:]
                events.emit(
                    "update_failed",
                    f"on_change {' '.join(argv)} failed (exit {proc.returncode}): {tail}",
                    logging.WARNING,
                    reason="on_change_failed",
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            events.emit(
                "update_failed",
                f"on_change {' '.join(argv)} failed: {exc}",
                logging.WARNING,
                reason="on_change_failed",
            )
