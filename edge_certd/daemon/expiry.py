"""The daemon's expiry warnings: what it has said, so each is said once.

The rule (which CAs expire, which threshold they crossed) is `core/expiry.py`'s; this is
the memory of the warnings already given, which lives as long as the process: a root made
to live 30 days is not a warning every hour of its life, and after a restart the current
threshold is said once more.
"""

from __future__ import annotations

import datetime as dt
import logging

from edge_certd.config import Config
from edge_certd.core.expiry import expiring
from edge_certd.core.text import iso, plural
from edge_certd.store.state import StatePaths, load_manifest
from edge_certd.sync import journal as events


class ExpiryWarnings:
    """Warn once per CA per threshold crossed (30, then 7, then 1 day...)."""

    def __init__(self) -> None:
        self.warned: dict[str, int] = {}  # sha256 -> the threshold last warned about

    def check(self, config: Config, now: dt.datetime) -> None:
        """Read the manifest and log each managed CA that crossed a threshold since the
        last warning about it."""
        entries = load_manifest(StatePaths(config.state_dir)).entries.values()
        for item in expiring(entries, config.expiry.warn_days, now):
            ca, days = item.ca, item.days_left
            level = -1 if item.expired else item.threshold
            if self.warned.get(ca.sha256, level + 1) <= level:
                continue  # said already for this threshold
            self.warned[ca.sha256] = level
            what = (
                "has expired"
                if item.expired
                else f"expires in {plural(days, 'day')} (warning at {item.threshold})"
            )
            events.emit(
                "expiring",
                f'managed root CA "{ca.subject}" {what}, on '
                f"{iso(ca.not_after)}; drop its successor into {config.drop_dir}",
                logging.WARNING,
                sha256=ca.sha256,
                subject=ca.subject,
                reason=f"{days} days left",
            )
