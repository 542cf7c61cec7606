"""The grace hold's pure decision (core/hold.py): given the planned removals, the gateway's last
probe, the running holds and now, what stays installed and until when.

Each "held" has its "not held" beside it: a hold never adds trust, never outlives its period,
never survives the gateway moving, and never delays an operator's `edge-certd remove`.
"""

from __future__ import annotations

import datetime as dt
import json

from edge_certd.core.gateway import GatewayState, PresentedCert, Probe, StoreVerdict
from edge_certd.core.hold import (
    MAX_HOLDS,
    HoldRecord,
    Release,
    decide,
    next_end,
    status_fragment,
)
from edge_certd.core.model import InstalledCA

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
ROOT_A, ROOT_B, OTHER = "a" * 64, "b" * 64, "c" * 64
GONE = ("/usr/share/edge-certd/roots.d/contoso-roots/root-a.pem",)


def installed(sha: str, sources: tuple[str, ...] = GONE) -> InstalledCA:
    return InstalledCA(
        sha256=sha,
        subject=f"CN=Root {sha[0]}",
        not_before=NOW - dt.timedelta(days=300),
        not_after=NOW + dt.timedelta(days=3000),
        path=f"/ca/root-{sha[:16]}.crt",
        sources=sources,
        installed_at=NOW - dt.timedelta(days=100),
    )


def probe(
    anchor: str | None,
    *,
    state: GatewayState = GatewayState.TRUSTED,
    age: dt.timedelta = dt.timedelta(minutes=2),
    trusted: bool = True,
) -> Probe:
    leaf = PresentedCert(
        position=0,
        subject="CN=gw.local",
        common_name="gw.local",
        sha256="1" * 64,
        not_after=NOW + dt.timedelta(days=90),
        self_signed=False,
        is_ca=False,
    )
    stores = tuple(
        StoreVerdict(store=name, trusted=trusted, anchor_sha256=anchor, problem=None if trusted else "x")
        for name in ("system", "edge-roots")
    )
    return Probe(gateway="gw.local:8883", checked_at=NOW - age, state=state, stores=stores, chain=(leaf,))


def record(sha: str = ROOT_A, days_ago: float = 1) -> HoldRecord:
    return HoldRecord(
        sha256=sha,
        subject=f"CN=Root {sha[0]}",
        gateway="gw.local:8883",
        since=NOW - dt.timedelta(days=days_ago),
        sources=GONE,
    )


def run(  # type: ignore[no-untyped-def]
    *,
    removals=(ROOT_A,),
    probes=(),
    records=(),
    blocked=(),
    grace_days: int = 7,
    provided=(),
    kept_otherwise=(),
    managed=None,
):
    manifest = {sha: installed(sha) for sha in (managed if managed is not None else (ROOT_A, ROOT_B))}
    return decide(
        removals=[installed(sha) for sha in removals],
        managed=manifest,
        provided=frozenset(provided),
        kept_otherwise=frozenset(kept_otherwise),
        probes=list(probes),
        records={r.sha256: r for r in records},
        blocked=frozenset(blocked),
        grace_days=grace_days,
        now=NOW,
    )


# --------------------------------------------------------------------------- when a hold begins


def test_a_removed_root_the_gateway_anchors_at_is_held_for_grace_days() -> None:
    decision = run(probes=[probe(ROOT_A)])
    (hold,) = decision.keep
    assert decision.started == decision.keep
    assert hold.sha256 == ROOT_A and hold.since == NOW and hold.until == NOW + dt.timedelta(days=7)
    assert hold.gateway == "gw.local:8883" and hold.sources == GONE
    assert [r.sha256 for r in decision.records] == [ROOT_A]


def test_a_removed_root_the_gateway_does_not_anchor_at_goes_at_once() -> None:
    decision = run(probes=[probe(ROOT_B)])
    assert decision.keep == () and decision.records == () and decision.ended == ()


def test_no_probe_a_stale_one_or_a_future_one_holds_nothing() -> None:
    assert run().keep == ()
    assert run(probes=[probe(ROOT_A, age=dt.timedelta(minutes=21))]).keep == ()
    assert run(probes=[probe(ROOT_A, age=-dt.timedelta(hours=1))]).keep == ()


def test_an_untrusted_or_unreachable_probe_begins_no_hold() -> None:
    # Stores that trust the chain but a name that does not match: not "recent and trusted".
    mismatch = probe(ROOT_A, state=GatewayState.UNTRUSTED)
    assert run(probes=[mismatch]).keep == ()
    refused = probe(ROOT_A, state=GatewayState.UNTRUSTED, trusted=False)
    assert run(probes=[refused]).keep == ()
    gone = Probe(gateway="gw.local:8883", checked_at=NOW, state=GatewayState.UNREACHABLE, cause="timeout")
    assert run(probes=[gone]).keep == ()


def test_grace_days_0_holds_nothing_and_ends_a_running_hold() -> None:
    assert run(probes=[probe(ROOT_A)], grace_days=0).keep == ()
    decision = run(probes=[probe(ROOT_A)], records=[record()], grace_days=0)
    assert decision.keep == () and [e.reason for e in decision.ended] == [Release.GRACE_OFF]


def test_without_a_gateway_configured_nothing_is_held_and_a_running_hold_ends() -> None:
    decision = decide(
        removals=[installed(ROOT_A)],
        managed={ROOT_A: installed(ROOT_A)},
        provided=frozenset(),
        kept_otherwise=frozenset(),
        probes=[probe(ROOT_A)],
        records={ROOT_A: record()},
        blocked=frozenset(),
        grace_days=7,
        now=NOW,
        watching=False,
    )
    assert decision.keep == () and [e.reason for e in decision.ended] == [Release.GRACE_OFF]


def test_an_operator_removal_is_never_held_and_ends_a_running_hold() -> None:
    assert run(probes=[probe(ROOT_A)], blocked=[ROOT_A]).keep == ()
    decision = run(probes=[probe(ROOT_A)], records=[record()], blocked=[ROOT_A])
    assert decision.keep == () and decision.records == ()
    assert [e.reason for e in decision.ended] == [Release.OPERATOR_REMOVED]


def test_a_root_edge_certd_did_not_install_is_never_held() -> None:
    # In ca_dir under our name pattern but not in the manifest: nothing says edge-certd trusted it.
    assert run(probes=[probe(ROOT_A)], managed=(ROOT_B,)).keep == ()


def test_a_root_that_is_not_being_removed_is_not_held() -> None:
    # The gateway anchors at B, which stays: a hold only ever keeps a planned removal.
    assert run(removals=(), probes=[probe(ROOT_B)]).keep == ()


def test_at_most_max_holds_begin_in_one_sync() -> None:
    shas = [f"{i:064x}" for i in range(MAX_HOLDS + 4)]
    probes = [probe(sha) for sha in shas]
    assert len(run(removals=shas, probes=probes, managed=shas).keep) == MAX_HOLDS


# --------------------------------------------------------------------------- while it runs, and its end


def test_a_running_hold_keeps_its_start_across_syncs() -> None:
    decision = run(probes=[probe(ROOT_A)], records=[record(days_ago=3)])
    (hold,) = decision.keep
    assert decision.started == ()
    assert hold.since == NOW - dt.timedelta(days=3) and hold.until == NOW + dt.timedelta(days=4)


def test_a_hold_begun_by_a_clock_that_ran_ahead_is_counted_from_now() -> None:
    decision = run(probes=[probe(ROOT_A)], records=[record(days_ago=-400)])
    (hold,) = decision.keep
    assert hold.until == NOW + dt.timedelta(days=7)
    assert decision.records[0].since == NOW  # and kept so


def test_a_running_hold_ends_when_grace_days_have_passed() -> None:
    decision = run(probes=[probe(ROOT_A)], records=[record(days_ago=7)])
    assert decision.keep == () and decision.records == ()
    (ended,) = decision.ended
    assert ended.reason is Release.GRACE_ENDED and "grace period" in ended.message
    # A day short of it, the same probe keeps it.
    assert run(probes=[probe(ROOT_A)], records=[record(days_ago=6)]).keep != ()


def test_a_running_hold_ends_when_the_gateway_is_trusted_under_another_root() -> None:
    decision = run(probes=[probe(ROOT_B)], records=[record()])
    assert decision.keep == ()
    (ended,) = decision.ended
    assert ended.reason is Release.GATEWAY_MOVED and "gw.local:8883" in ended.message


def test_a_running_hold_outlasts_a_gateway_that_is_unreachable_or_a_stale_probe() -> None:
    # A gateway restarting during the upgrade must not cost it the root it comes back with.
    gone = Probe(gateway="gw.local:8883", checked_at=NOW, state=GatewayState.UNREACHABLE, cause="timeout")
    for probes in ([gone], [probe(ROOT_B, age=dt.timedelta(hours=2))], []):
        decision = run(probes=probes, records=[record()])
        assert [h.sha256 for h in decision.keep] == [ROOT_A], probes
        assert decision.ended == ()


def test_a_hold_whose_source_is_back_ends_without_a_removal() -> None:
    decision = run(removals=(), provided=(ROOT_A,), records=[record()])
    assert decision.keep == () and [e.reason for e in decision.ended] == [Release.SOURCE_BACK]


def test_a_hold_kept_for_an_unreadable_source_keeps_its_record() -> None:
    decision = run(removals=(), kept_otherwise=(ROOT_A,), records=[record(days_ago=2)])
    assert decision.ended == () and decision.records == (record(days_ago=2),)


def test_a_hold_on_a_root_no_longer_installed_ends() -> None:
    decision = run(removals=(), records=[record()])
    assert [e.reason for e in decision.ended] == [Release.NOT_INSTALLED]


# --------------------------------------------------------------------------- what people see


def test_the_status_fragment_names_the_count_and_the_soonest_end() -> None:
    assert status_fragment(()) is None
    decision = run(probes=[probe(ROOT_A)])
    assert status_fragment(decision.keep) == "holding 1 root the gateway still uses, until 2026-12-12"
    assert next_end(decision.keep) == NOW + dt.timedelta(days=7)
    assert next_end(()) is None


# --------------------------------------------------------------------------- the files, read as hostile


def test_holds_round_trip_and_a_holds_file_edge_certd_did_not_write_is_no_holds(tree) -> None:  # type: ignore[no-untyped-def]
    from edge_certd.sync import holds

    config = tree.load()
    path = tree.state / holds.HOLDS_NAME
    tree.state.mkdir(parents=True, exist_ok=True)
    holds.save_records(config, [record()])
    assert holds.load_records(config) == {ROOT_A: record()}
    good = path.read_text()
    bad = [
        b"\x00\xff not json",
        b"[]",
        b'{"version": 2, "holds": []}',
        good.replace(ROOT_A, "A" * 64).encode(),  # not lower-case hex
        good.replace("Z", "").encode(),  # a time without a zone
        b'{"version": 1, "holds": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",  # deep
        b'{"version": 1, "holds": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # and too big
    ]
    for data in bad:
        path.write_bytes(data)
        assert holds.load_records(config) == {}, data[:40]
    path.unlink()
    path.symlink_to(tree.root / "elsewhere.json")
    (tree.root / "elsewhere.json").write_text(good)
    assert holds.load_records(config) == {}  # a link is not followed
    path.unlink()
    holds.save_records(config, [])
    assert not path.exists()


def test_a_probe_result_the_probe_would_not_write_begins_no_hold(tree) -> None:  # type: ignore[no-untyped-def]
    from edge_certd.core.gateway import result_to_json
    from edge_certd.sync import holds

    result = tree.root / "probe/result.json"
    result.parent.mkdir()
    tree.write_config(gateway__host="gw.local:8883", gateway__result_file=str(result))
    config = tree.load()
    result.write_text(json.dumps(result_to_json([probe(ROOT_A)], NOW)))
    assert [p.anchor for p in holds.last_probes(config)] == [ROOT_A]
    for data in (b"{" * 50_000, b'{"schema_version": 1, "gateways": [{"gateway": 1}]}', b"\xff" * 300_000):
        result.write_bytes(data)
        assert holds.last_probes(config) == (), data[:40]
    tree.write_config(gateway__host=None)
    result.write_text(json.dumps(result_to_json([probe(ROOT_A)], NOW)))
    assert holds.last_probes(tree.load()) == ()  # no gateway configured: no watch, no hold
