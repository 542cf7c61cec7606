"""The one expiry rule, for `status`, `doctor` and the daemon's warnings. Pure.

A CA is *expiring* when its notAfter is within the largest `expiry.warn_days` of now, and
*expired* once notAfter has passed. Days left are whole days, rounded down, so a CA with
23 hours left has 0 days left and one that expired a second ago has -1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_certd.core.model import InstalledCA


@dataclass(frozen=True, kw_only=True)
class Expiring:
    ca: InstalledCA
    days_left: int
    threshold: int  # the smallest warn_days threshold the CA is inside

    @property
    def expired(self) -> bool:
        return self.days_left < 0


def days_left(not_after: dt.datetime, now: dt.datetime) -> int:
    return (not_after - now).days


def expiring(cas: Iterable[InstalledCA], warn_days: Sequence[int], now: dt.datetime) -> tuple[Expiring, ...]:
    """The CAs inside the warning window (expired ones included), soonest first."""
    thresholds = sorted(warn_days) or [0]
    window = dt.timedelta(days=thresholds[-1])
    found = []
    for ca in cas:
        if ca.not_after - now > window:
            continue
        left = days_left(ca.not_after, now)
        crossed = next((t for t in thresholds if left <= t), thresholds[-1])
        found.append(Expiring(ca=ca, days_left=left, threshold=crossed))
    return tuple(sorted(found, key=lambda e: (e.ca.not_after, e.ca.sha256)))
