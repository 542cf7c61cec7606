"""The gateway watch's pure core: what one probe of the gateway saw, read back strictly from
the probe's result file (an unprivileged process wrote it from what a gateway sent), and
what changed since the probe before (the events the daemon logs, once each).

The probe itself (`diagnose/watch.py`) runs `verify`'s steps in its own unit; this module
never touches the network or the disk.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from edge_certd.core.text import iso, parse_iso, printable

RESULT_SCHEMA_VERSION = 1
# Bounds on what a result file may hold; a result past them is refused whole.
MAX_GATEWAYS = 16
MAX_CHAIN = 10
MAX_STORES = 8
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LABEL = 120  # a gateway label (host:port) in metrics, STATUS= and the journal


class GatewayState(StrEnum):
    TRUSTED = "trusted"  # every store trusts the chain and the name matches
    UNTRUSTED = "untrusted"  # reached, but a store (or the name) refuses it
    UNREACHABLE = "unreachable"  # DNS, TCP, the TLS handshake: no chain to judge
    UNKNOWN = "unknown"  # no gateway could be named (a connection string without GatewayHostName)


class Severity(StrEnum):
    """syslog's words, so the journal's PRIORITY follows from them."""

    INFO = "info"
    NOTICE = "notice"
    WARNING = "warning"
    ERROR = "err"


class EventKind(StrEnum):
    FIRST = "first"  # the first probe since the memory was empty
    RENEWED = "renewed"  # a new server certificate or Edge CA, same root
    ANCHOR_CHANGED = "anchor_changed"  # the chain now anchors at another installed root
    UNTRUSTED = "untrusted"
    UNREACHABLE = "unreachable"
    RECOVERED = "recovered"
    EXPIRING = "expiring"
    TEST_ONLY = "test_only"


# Test-only CAs, by the common names their generators write. A chain ending in one of these
# works on the bench and breaks devices in the field:
# - IoT Edge 1.2 and later, with no `edge_ca` configured, issues a "quickstart" Edge CA, a
#   self-signed root valid 90 days and regenerated at 80 % of its life, with the subject
#   CN="aziot-edge CA <device id>" (Azure/iotedge edgelet/edgelet-http-workload/src/lib.rs,
#   the default edge_ca_subject): every regeneration is a root no device trusts yet.
# - IoT Edge 1.1's quickstart chain: "Test Edge Owner CA" over "Test Edge Device CA"
#   (edgelet/hsm-sys/azure-iot-hsm-c/src/constants.c, OWNER_CA_COMMON_NAME and
#   DEVICE_CA_COMMON_NAME), 90 days as well.
# - certGen.sh (tools/CACertificates/certGen.sh) makes "Azure_IoT_Hub_CA_Cert_Test_Only" and
#   "Azure_IoT_Hub_Intermediate_Cert_Test_Only", for tests only, 30 days by default.
_QUICKSTART_PREFIX = "aziot-edge CA "
_TEST_ONLY_NAMES = {
    "Test Edge Owner CA": "IoT Edge 1.1's quickstart owner CA",
    "Test Edge Device CA": "IoT Edge 1.1's quickstart device CA",
    "Azure_IoT_Hub_CA_Cert_Test_Only": "certGen.sh's test-only root CA",
    "Azure_IoT_Hub_Intermediate_Cert_Test_Only": "certGen.sh's test-only intermediate CA",
}


class ResultError(ValueError):
    """A probe result that is not what the probe writes: refused whole, never half read."""


@dataclass(frozen=True, kw_only=True)
class PresentedCert:
    """One certificate the gateway presented; position 0 is its server certificate."""

    position: int
    subject: str
    common_name: str
    sha256: str
    not_after: dt.datetime
    self_signed: bool
    is_ca: bool


@dataclass(frozen=True, kw_only=True)
class StoreVerdict:
    """One trust store's answer, as `verify` checks each store on its own."""

    store: str  # "system", "edge-roots", "ca-bundle", "java"
    trusted: bool
    anchor_sha256: str | None = None  # the installed root the chain anchors at
    problem: str | None = None  # verify's words when not trusted


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What one probe of one gateway endpoint saw."""

    gateway: str  # host:port, as metrics and the journal label it
    checked_at: dt.datetime
    state: GatewayState
    cause: str | None = None  # verify's diagnosis code (untrusted-root, hostname-mismatch, timeout, ...)
    message: str | None = None
    fix: str | None = None
    stores: tuple[StoreVerdict, ...] = ()
    chain: tuple[PresentedCert, ...] = ()
    test_only: str | None = None  # why the chain's CA is a test-only one

    @property
    def anchor(self) -> str | None:
        """The installed root the chain anchors at, as the first store that trusts it says."""
        return next((s.anchor_sha256 for s in self.stores if s.trusted and s.anchor_sha256), None)

    @property
    def name_matches(self) -> bool:
        """False when every store trusts the chain and still the gateway is refused: then
        its certificate does not name the host, and every runtime refuses it."""
        return not (self.state is GatewayState.UNTRUSTED and self.stores and not self.untrusting)

    def store_up(self, store: StoreVerdict) -> bool:
        """Whether a runtime reading `store` connects: the store trusts the chain and the
        certificate names the host."""
        return store.trusted and self.name_matches

    @property
    def untrusting(self) -> tuple[StoreVerdict, ...]:
        return tuple(s for s in self.stores if not s.trusted)

    @property
    def own_certificates(self) -> tuple[PresentedCert, ...]:
        """The gateway's own certificates (server, Edge CA, intermediates): not a
        self-signed root it happens to send, which is the device's to trust, not renew."""
        return tuple(c for c in self.chain if not (c.self_signed and c.position > 0))


@dataclass(frozen=True, kw_only=True)
class GatewayEvent:
    kind: EventKind
    severity: Severity
    gateway: str
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Memory:
    """What the daemon remembers of one gateway between probes, so each event is said once."""

    state: GatewayState
    chain: tuple[str, ...] = ()  # sha256 of each presented certificate
    anchor: str | None = None
    warned: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # sha256 -> thresholds said
    test_only: str | None = None


def find_test_only_ca(chain: Sequence[PresentedCert]) -> str | None:
    """Why this chain ends in a test-only CA, or None. See the names above."""
    for cert in chain:
        if cert.common_name.startswith(_QUICKSTART_PREFIX) and cert.self_signed:
            return (
                f"the gateway's Edge CA ({cert.common_name}) is IoT Edge's self-signed quickstart CA: it "
                "lives 90 days and every renewal is a new root that devices do not trust"
            )
        label = _TEST_ONLY_NAMES.get(cert.common_name)
        if label is not None:
            return f"the gateway's chain uses {label} ({cert.common_name}), which is for tests only"
    return None


def changes(
    previous: Memory | None, probe: Probe, *, warn_days: Sequence[int], now: dt.datetime
) -> tuple[list[GatewayEvent], Memory]:
    """The events one probe makes, given what the last one left; and the new memory."""
    events: list[GatewayEvent] = []
    gw = probe.gateway
    chain = tuple(c.sha256 for c in probe.chain)
    memory = Memory(
        state=probe.state,
        chain=chain if probe.chain else (previous.chain if previous else ()),
        anchor=probe.anchor
        if probe.state is GatewayState.TRUSTED
        else (previous.anchor if previous else None),
        warned=dict(previous.warned) if previous else {},
        test_only=previous.test_only if previous else None,
    )
    if previous is None or previous.state is not probe.state:
        events.extend(_state_event(previous, probe))
    elif probe.chain and chain != previous.chain and probe.state is GatewayState.UNTRUSTED:
        events.extend(_state_event(None, probe))  # a new chain that is refused again: say it
    if probe.state is GatewayState.TRUSTED and previous is not None and probe.chain:
        if previous.anchor and probe.anchor and probe.anchor != previous.anchor:
            events.append(
                GatewayEvent(
                    kind=EventKind.ANCHOR_CHANGED,
                    severity=Severity.NOTICE,
                    gateway=gw,
                    message=f"gateway {gw} now presents a chain that anchors at another trusted root "
                    f"(sha256 {probe.anchor[:16]}…, was {previous.anchor[:16]}…)",
                    fields={"ANCHOR_SHA256": probe.anchor, "PREVIOUS_ANCHOR_SHA256": previous.anchor},
                )
            )
        elif previous.state is GatewayState.TRUSTED and previous.chain and chain != previous.chain:
            renewed = [c for c in probe.own_certificates if c.sha256 not in previous.chain]
            names = ", ".join(c.subject for c in renewed) or "its chain"
            events.append(
                GatewayEvent(
                    kind=EventKind.RENEWED,
                    severity=Severity.INFO,
                    gateway=gw,
                    message=f"gateway {gw} presents a renewed chain under the same root: {names}",
                    fields={"SERVER_SHA256": chain[0]},
                )
            )
    if probe.test_only and chain and memory.test_only != chain[-1]:
        events.append(
            GatewayEvent(
                kind=EventKind.TEST_ONLY,
                severity=Severity.WARNING,
                gateway=gw,
                message=f"gateway {gw}: {probe.test_only}; give the gateway an Edge CA from your "
                "own PKI (IoT Edge config.toml [edge_ca]) and ship its root to the devices",
                fields={"SHA256": chain[-1]},
            )
        )
        memory = replace(memory, test_only=chain[-1])
    events.extend(_expiry_events(probe, memory, warn_days, now))
    memory = replace(memory, warned=_warned_after(probe, memory, warn_days, now))
    return events, memory


def _state_event(previous: Memory | None, probe: Probe) -> list[GatewayEvent]:
    gw = probe.gateway
    if probe.state is GatewayState.TRUSTED:
        kind = EventKind.FIRST if previous is None else EventKind.RECOVERED
        return [
            GatewayEvent(
                kind=kind,
                severity=Severity.INFO,
                gateway=gw,
                message=f"gateway {gw} is trusted by every store ({len(probe.stores)})",
            )
        ]
    if probe.state is GatewayState.UNTRUSTED:
        which = ", ".join(f"{s.store} ({s.problem or 'not trusted'})" for s in probe.untrusting)
        what = f"not trusted by {which}" if which else (probe.message or "not trusted")
        return [
            GatewayEvent(
                kind=EventKind.UNTRUSTED,
                severity=Severity.ERROR,
                gateway=gw,
                message=f"gateway {gw} is {what}; fix: {probe.fix or 'see edge-certd verify'}",
                fields={"CAUSE": probe.cause or "untrusted"},
            )
        ]
    return [
        GatewayEvent(
            kind=EventKind.UNREACHABLE,
            severity=Severity.WARNING,
            gateway=gw,
            message=f"gateway {gw} is unreachable: {probe.message or probe.cause or 'no answer'}",
            fields={"CAUSE": probe.cause or "unreachable"},
        )
    ]


def _crossed(days: int, warn_days: Sequence[int]) -> tuple[int, ...]:
    return tuple(t for t in sorted(set(warn_days)) if days <= t)


def _expiry_events(
    probe: Probe, memory: Memory, warn_days: Sequence[int], now: dt.datetime
) -> list[GatewayEvent]:
    events = []
    for cert in probe.own_certificates:
        days = (cert.not_after - now).days
        crossed = _crossed(days, warn_days)
        said = set(memory.warned.get(cert.sha256, ()))
        if not crossed or min(crossed) in said:
            continue  # one warning per threshold: only the smallest new one is said
        what = "server certificate" if cert.position == 0 else "CA certificate"
        when = f"expired {-days} days ago" if days < 0 else f"expires in {days} days"
        events.append(
            GatewayEvent(
                kind=EventKind.EXPIRING,
                severity=Severity.WARNING,
                gateway=probe.gateway,
                message=f"gateway {probe.gateway}: its {what} {cert.subject} {when} "
                f"(notAfter {iso(cert.not_after)})",
                fields={"SHA256": cert.sha256, "DAYS_LEFT": str(days), "THRESHOLD": str(min(crossed))},
            )
        )
    return events


def _warned_after(
    probe: Probe, memory: Memory, warn_days: Sequence[int], now: dt.datetime
) -> dict[str, tuple[int, ...]]:
    # Only the certificates still presented are remembered: the memory stays as small as a chain.
    if not probe.chain:
        return dict(memory.warned)
    warned: dict[str, tuple[int, ...]] = {}
    for cert in probe.own_certificates:
        crossed = _crossed((cert.not_after - now).days, warn_days)
        if crossed:
            warned[cert.sha256] = tuple(sorted(set(memory.warned.get(cert.sha256, ())) | set(crossed)))
    return warned


def status_fragment(probe: Probe, now: dt.datetime) -> str:
    """The gateway's part of STATUS= and of `edge-certd status`."""
    age = _age(now - probe.checked_at)
    gw = probe.gateway
    if probe.state is GatewayState.TRUSTED:
        return f"gateway {gw} trusted by all stores, checked {age}"
    if probe.state is GatewayState.UNTRUSTED:
        which = ", ".join(s.store for s in probe.untrusting) or "the host name check"
        return f"gateway {gw} NOT trusted by {which} ({probe.cause or 'untrusted'}), checked {age}"
    if probe.state is GatewayState.UNREACHABLE:
        return f"gateway {gw} unreachable ({probe.cause or 'no answer'}), checked {age}"
    return f"gateway unknown ({probe.message or 'no host'}), checked {age}"


def _age(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


# --------------------------------------------------------------------------- the result file


def result_to_json(probes: Sequence[Probe], probed_at: dt.datetime) -> dict[str, Any]:
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "probed_at": iso(probed_at),
        "gateways": [_probe_to_json(p) for p in probes],
    }


def result_from_json(doc: Mapping[str, Any]) -> tuple[Probe, ...]:
    """The probes in a result document, every field checked and every string escaped and
    bounded: the file was written by an unprivileged process from what a gateway sent.

    Raises:
        ResultError: anything the probe does not write.
    """
    try:
        if doc.get("schema_version") != RESULT_SCHEMA_VERSION:
            found = printable(str(doc.get("schema_version")), 20)
            raise ResultError(f"schema_version {found} is not {RESULT_SCHEMA_VERSION}")
        gateways = doc["gateways"]
        if not isinstance(gateways, list) or len(gateways) > MAX_GATEWAYS:
            raise ResultError("gateways is not a list of at most 16")
        return tuple(_probe_from_json(item) for item in gateways)
    except ResultError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ResultError(f"malformed ({type(exc).__name__})") from None


def _probe_to_json(p: Probe) -> dict[str, Any]:
    return {
        "gateway": p.gateway,
        "checked_at": iso(p.checked_at),
        "state": str(p.state),
        "cause": p.cause,
        "message": p.message,
        "fix": p.fix,
        "test_only": p.test_only,
        "stores": [
            {"store": s.store, "trusted": s.trusted, "anchor_sha256": s.anchor_sha256, "problem": s.problem}
            for s in p.stores
        ],
        "chain": [
            {
                "position": c.position,
                "subject": c.subject,
                "common_name": c.common_name,
                "sha256": c.sha256,
                "not_after": iso(c.not_after),
                "self_signed": c.self_signed,
                "is_ca": c.is_ca,
            }
            for c in p.chain
        ],
    }


def _probe_from_json(item: Mapping[str, Any]) -> Probe:
    stores = item["stores"]
    chain = item["chain"]
    if not isinstance(stores, list) or len(stores) > MAX_STORES:
        raise ResultError("stores is not a list of at most 8")
    if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
        raise ResultError("chain is not a list of at most 10")
    return Probe(
        gateway=_text(item["gateway"], _LABEL),
        checked_at=_moment(item["checked_at"]),
        state=GatewayState(item["state"]),
        cause=_optional_text(item.get("cause"), 40),
        message=_optional_text(item.get("message")),
        fix=_optional_text(item.get("fix")),
        test_only=_optional_text(item.get("test_only")),
        stores=tuple(
            StoreVerdict(
                store=_text(s["store"], 20),
                trusted=_flag(s["trusted"]),
                anchor_sha256=_optional_sha(s.get("anchor_sha256")),
                problem=_optional_text(s.get("problem")),
            )
            for s in stores
        ),
        chain=tuple(
            PresentedCert(
                position=_index(c["position"]),
                subject=_text(c["subject"]),
                common_name=_text(c["common_name"]),
                sha256=_sha(c["sha256"]),
                not_after=_moment(c["not_after"]),
                self_signed=_flag(c["self_signed"]),
                is_ca=_flag(c["is_ca"]),
            )
            for c in chain
        ),
    )


def _text(value: object, limit: int = 200) -> str:
    if not isinstance(value, str):
        raise ResultError("a text field is not a string")
    return printable(value, limit)


def _optional_text(value: object, limit: int = 200) -> str | None:
    return None if value is None else _text(value, limit)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ResultError("a flag is not true or false")
    return value


def _index(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_CHAIN:
        raise ResultError("a chain position is out of range")
    return value


def _sha(value: object) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ResultError("a fingerprint is not 64 hex digits")
    return value


def _optional_sha(value: object) -> str | None:
    return None if value is None else _sha(value)


def _moment(value: object) -> dt.datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ResultError("a time is not an ISO 8601 string")
    moment = parse_iso(value)
    if moment.tzinfo is None:
        raise ResultError("a time has no time zone")
    return moment


def probes_from_record(doc: Mapping[str, object]) -> tuple[Probe, ...]:
    """The last probes as daemon.json records them (its `gateway` list); () when it holds
    none, or anything the probe would not write."""
    found = doc.get("gateway")
    if not isinstance(found, list):
        return ()
    try:
        return result_from_json({"schema_version": RESULT_SCHEMA_VERSION, "gateways": found})
    except ResultError:
        return ()
