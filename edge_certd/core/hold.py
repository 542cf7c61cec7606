"""The grace hold: a root whose sources went away while the gateway still anchors at it. Pure.

Publishing a roots package without the old root (or deleting its drop file) before every
gateway serves a chain under the new one cuts the devices off: that is the classic mistake of
a root rotation. So a root the sync is about to remove stays installed for `gateway.grace_days`
while the gateway's last probe anchors at it, and goes at the first sync after the gateway
anchors elsewhere or the period ends.

A hold never adds trust. Only a CA that edge-certd installed itself (it is in the manifest and
in ca_dir) and that this sync would remove can be held; it is held only when a recent probe
that every store trusted names it as the chain's anchor; an operator's `edge-certd remove` is
never held (a compromised root must go at once).

Once a hold runs, a probe that brings no news (the gateway unreachable, the probe stale or
refused) keeps it until its end: a gateway that restarts while the roots package is upgraded
must not lose the root it comes back with. A recent probe that is trusted without it ends it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from edge_certd.core.gateway import GatewayState, Probe
from edge_certd.core.model import GatewayHold, InstalledCA
from edge_certd.core.text import iso, printable

# The probe runs every 5 minutes (edge-certd-probe.timer); three missed runs and it is not
# recent. The same bound doctor uses for a stale gateway watch.
RECENT_PROBE = dt.timedelta(minutes=20)
# A probe time this far ahead of the clock is not believed (a clock stepped back).
FUTURE_SLACK = dt.timedelta(minutes=5)
MAX_HOLDS = 16  # at most one anchor per endpoint, and MAX_GATEWAYS endpoints


class Release(StrEnum):
    """Why a hold ended. Stable: the journal's REASON field carries it."""

    GATEWAY_MOVED = "gateway_moved"  # a recent probe is trusted without the held root
    GRACE_ENDED = "grace_ended"  # gateway.grace_days have passed since it began
    OPERATOR_REMOVED = "operator_removed"  # `edge-certd remove`: never held
    GRACE_OFF = "grace_off"  # gateway.grace_days is 0, or no gateway is watched any more
    SOURCE_BACK = "source_back"  # a source provides it again: nothing to hold
    NOT_INSTALLED = "not_installed"  # its file left ca_dir some other way


@dataclass(frozen=True, kw_only=True)
class HoldRecord:
    """What the state keeps of one hold (gateway-holds.json), so its start survives a restart."""

    sha256: str
    subject: str
    gateway: str
    since: dt.datetime
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Ended:
    record: HoldRecord
    reason: Release
    message: str


@dataclass(frozen=True, kw_only=True)
class HoldDecision:
    keep: tuple[GatewayHold, ...]  # still installed this sync, though no source wants them
    started: tuple[GatewayHold, ...]  # of `keep`, those that began now
    ended: tuple[Ended, ...]
    records: tuple[HoldRecord, ...]  # what the state keeps after this sync

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(h.sha256 for h in self.keep)


class _News(StrEnum):
    USES = "uses"  # a recent probe anchors at the root
    ELSEWHERE = "elsewhere"  # a recent probe is trusted without it
    NONE = "none"  # no recent probe that says either


def decide(
    *,
    removals: Sequence[InstalledCA],
    managed: Mapping[str, InstalledCA],
    provided: Collection[str],
    kept_otherwise: Collection[str],
    probes: Sequence[Probe],
    records: Mapping[str, HoldRecord],
    blocked: Collection[str],
    grace_days: int,
    now: dt.datetime,
    watching: bool = True,
) -> HoldDecision:
    """Which of this sync's planned removals stay installed, and until when.

    Args:
        removals: what the sync's plan removes (installed in ca_dir, wanted by no source).
        managed: the manifest before this sync: what edge-certd itself installed.
        provided: the SHA-256s the sources provide now.
        kept_otherwise: the SHA-256s kept for sources that cannot be read right now.
        probes: the gateway watch's last result, one probe per endpoint.
        records: the holds running before this sync.
        blocked: CAs an operator removed (`edge-certd remove`).
        grace_days: `gateway.grace_days`; 0 holds nothing.
        watching: whether a gateway is configured; without one a hold would only wait for
            its end, so none runs.
    """
    grace = dt.timedelta(days=grace_days)
    if not watching:
        grace_days = 0
    keep: list[GatewayHold] = []
    started: list[GatewayHold] = []
    ended: list[Ended] = []
    records_after: list[HoldRecord] = []
    removing = {ca.sha256: ca for ca in removals}
    for sha, record in sorted(records.items()):
        if sha in removing:
            continue  # decided below
        if sha in blocked:
            ended.append(_ended(record, Release.OPERATOR_REMOVED))
        elif sha in provided:
            ended.append(_ended(record, Release.SOURCE_BACK))
        elif sha in kept_otherwise:
            # Kept for a source being rewritten or unreadable right now: the hold keeps its
            # start for the sync after.
            records_after.append(record)
        else:
            ended.append(_ended(record, Release.NOT_INSTALLED))
    for sha, ca in sorted(removing.items()):
        running = records.get(sha)
        if sha in blocked or grace_days <= 0 or sha not in managed:
            if running is not None:
                reason = (
                    Release.OPERATOR_REMOVED
                    if sha in blocked
                    else (Release.GRACE_OFF if grace_days <= 0 else Release.NOT_INSTALLED)
                )
                ended.append(_ended(running, reason))
            continue
        news, gateway = _news(sha, probes, now)
        if running is not None and running.since > now + FUTURE_SLACK:
            # Begun by a clock that ran ahead (a board without an RTC, then NTP): counted
            # from now, or it would last until that clock's date.
            running = replace(running, since=now.replace(microsecond=0))
        if running is None:
            if news is not _News.USES or len(keep) >= MAX_HOLDS:
                continue
            running = HoldRecord(
                sha256=sha,
                subject=ca.subject,
                gateway=gateway,
                since=now.replace(microsecond=0),  # whole seconds: people read it
                sources=managed[sha].sources,
            )
            hold = _hold(running, grace)
            started.append(hold)
        elif now >= running.since + grace:
            ended.append(_ended(running, Release.GRACE_ENDED))
            continue
        elif news is _News.ELSEWHERE:
            ended.append(_ended(running, Release.GATEWAY_MOVED))
            continue
        else:
            hold = _hold(running, grace)
        keep.append(hold)
        records_after.append(running)
    return HoldDecision(
        keep=tuple(keep), started=tuple(started), ended=tuple(ended), records=tuple(records_after)
    )


def next_end(holds: Sequence[GatewayHold]) -> dt.datetime | None:
    """When the soonest hold ends: the daemon syncs then (its timer, like the expiry checks)."""
    return min((h.until for h in holds), default=None)


def status_fragment(holds: Sequence[GatewayHold]) -> str | None:
    """`holding 1 root the gateway still uses, until 2026-12-12` for STATUS= and `status`."""
    if not holds:
        return None
    noun = "root" if len(holds) == 1 else "roots"
    until = min(h.until for h in holds).astimezone(dt.UTC).strftime("%Y-%m-%d")
    return f"holding {len(holds)} {noun} the gateway still uses, until {until}"


def started_message(hold: GatewayHold) -> str:
    return (
        f'"{hold.subject}" (sha256 {hold.sha256[:16]}…) lost its source '
        f"({', '.join(hold.sources) or 'unknown'}), but gateway {hold.gateway} still presents a chain "
        f"that anchors at it: it stays trusted until {iso(hold.until)}, or until the gateway serves a "
        "chain under another root; move the gateway to the new root, or run `edge-certd remove "
        f"{hold.sha256[:16]}` if the root is compromised"
    )


def _ended(record: HoldRecord, reason: Release) -> Ended:
    what = f'"{record.subject}" (sha256 {record.sha256[:16]}…)'
    because = {
        Release.GATEWAY_MOVED: f"gateway {record.gateway} is now trusted without it; it is removed",
        Release.GRACE_ENDED: "the grace period (gateway.grace_days) has ended; it is removed, and a "
        "gateway still anchored at it is no longer trusted",
        Release.OPERATOR_REMOVED: "an operator removed it (edge-certd remove)",
        Release.GRACE_OFF: "gateway.grace_days is 0, or no gateway is configured; it is removed",
        Release.SOURCE_BACK: "a source provides it again",
        Release.NOT_INSTALLED: "it is no longer installed",
    }[reason]
    return Ended(record=record, reason=reason, message=f"the hold on {what} ended: {because}")


def _hold(record: HoldRecord, grace: dt.timedelta) -> GatewayHold:
    return GatewayHold(
        sha256=record.sha256,
        subject=record.subject,
        gateway=record.gateway,
        since=record.since,
        until=record.since + grace,
        sources=record.sources,
    )


def _recent(probe: Probe, now: dt.datetime) -> bool:
    return now - RECENT_PROBE <= probe.checked_at <= now + FUTURE_SLACK


def _news(sha: str, probes: Sequence[Probe], now: dt.datetime) -> tuple[_News, str]:
    """What the recent probes say of one root: the gateway uses it, is trusted without it, or
    nothing either way; and the endpoint that says so."""
    recent = [p for p in probes if _recent(p, now)]
    for probe in recent:
        anchors = {s.anchor_sha256 for s in probe.stores if s.trusted}
        if probe.state is GatewayState.TRUSTED and sha in anchors:
            return _News.USES, printable(probe.gateway, 120)
    for probe in recent:
        # Still anchored at it, only refused for another reason (its name): no news.
        if any(s.anchor_sha256 == sha for s in probe.stores):
            return _News.NONE, ""
    for probe in recent:
        if probe.state is GatewayState.TRUSTED:
            return _News.ELSEWHERE, printable(probe.gateway, 120)
    return _News.NONE, ""
