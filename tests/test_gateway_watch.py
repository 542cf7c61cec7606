"""The gateway watch: the probe's result read back strictly, events said once each, test-only
CAs flagged, and `verify --chain` checking a planned chain offline.

The pure part runs on plain values; the probe runs against a real TLS server on loopback whose
chain the test changes, on a device-like tree (conftest.make_tree).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.loopback import LoopbackServer, tls_handler
from support.tree import Tree, make_tree, require_tool

from edge_certd import cli
from edge_certd.core.gateway import (
    EventKind,
    GatewayState,
    Memory,
    PresentedCert,
    Probe,
    ResultError,
    Severity,
    StoreVerdict,
    changes,
    find_test_only_ca,
    result_from_json,
    result_to_json,
    status_fragment,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
WARN = (14, 7, 3, 1)
ROOT_A, ROOT_B = "a" * 64, "b" * 64


def cert(position: int, cn: str, sha: str, *, days: int = 300, self_signed: bool = False) -> PresentedCert:
    return PresentedCert(
        position=position,
        subject=f"CN={cn}",
        common_name=cn,
        sha256=sha,
        not_after=NOW + dt.timedelta(days=days, hours=1),
        self_signed=self_signed,
        is_ca=position > 0,
    )


def probe(
    *chain: PresentedCert, state: GatewayState = GatewayState.TRUSTED, anchor: str | None = ROOT_A
) -> Probe:
    trusted = state is GatewayState.TRUSTED
    stores = tuple(
        StoreVerdict(store=name, trusted=trusted, anchor_sha256=anchor if trusted else None, problem=None)
        for name in ("system", "edge-roots")
    )
    return Probe(gateway="gw.local:8883", checked_at=NOW, state=state, stores=stores, chain=chain)


SERVER_1 = cert(0, "gw.local", "1" * 64)
SERVER_2 = cert(0, "gw.local", "2" * 64)
EDGE_CA = cert(1, "Edge CA gw", "e" * 64)


def kinds(events: list) -> list[tuple[EventKind, Severity]]:  # type: ignore[type-arg]
    return [(e.kind, e.severity) for e in events]


# --------------------------------------------------------------------------- events, pure


def test_the_first_probe_is_said_once_and_a_repeat_says_nothing() -> None:
    events, memory = changes(None, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.FIRST, Severity.INFO)]
    again, _ = changes(memory, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    assert again == []


def test_a_renewed_server_certificate_under_the_same_root_is_info_only() -> None:
    _, memory = changes(None, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    events, _ = changes(memory, probe(SERVER_2, EDGE_CA), warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.RENEWED, Severity.INFO)]
    assert "CN=gw.local" in events[0].message


def test_a_chain_anchoring_at_another_installed_root_is_a_notice() -> None:
    _, memory = changes(None, probe(SERVER_1, EDGE_CA, anchor=ROOT_A), warn_days=WARN, now=NOW)
    events, memory = changes(memory, probe(SERVER_2, EDGE_CA, anchor=ROOT_B), warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.ANCHOR_CHANGED, Severity.NOTICE)]
    assert events[0].fields["ANCHOR_SHA256"] == ROOT_B
    assert memory.anchor == ROOT_B


def test_an_untrusted_chain_is_an_error_said_once_then_recovery_is_said() -> None:
    _, memory = changes(None, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    bad = probe(SERVER_2, state=GatewayState.UNTRUSTED)
    events, memory = changes(memory, bad, warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.UNTRUSTED, Severity.ERROR)]
    assert changes(memory, bad, warn_days=WARN, now=NOW)[0] == []
    events, _ = changes(memory, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.RECOVERED, Severity.INFO)]


def test_an_unreachable_gateway_is_unreachable_not_untrusted() -> None:
    gone = Probe(gateway="gw.local:8883", checked_at=NOW, state=GatewayState.UNREACHABLE, cause="timeout")
    events, memory = changes(None, gone, warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.UNREACHABLE, Severity.WARNING)]
    assert "untrusted" not in events[0].message
    assert "unreachable (timeout)" in status_fragment(gone, NOW)


def test_a_server_certificate_5_days_from_expiry_warns_once() -> None:
    soon = cert(0, "gw.local", "5" * 64, days=5)
    events, memory = changes(None, probe(soon, EDGE_CA), warn_days=WARN, now=NOW)
    assert kinds(events) == [(EventKind.FIRST, Severity.INFO), (EventKind.EXPIRING, Severity.WARNING)]
    assert events[1].fields["THRESHOLD"] == "7" and events[1].fields["DAYS_LEFT"] == "5"
    assert changes(memory, probe(soon, EDGE_CA), warn_days=WARN, now=NOW)[0] == []
    later = NOW + dt.timedelta(days=3)  # 2 days left: the 3-day threshold is new
    events, _ = changes(memory, probe(soon, EDGE_CA), warn_days=WARN, now=later)
    assert [e.fields.get("THRESHOLD") for e in events] == ["3"]


def test_a_self_signed_root_the_gateway_sends_is_not_its_own_certificate_to_renew() -> None:
    root = cert(2, "Some Root", "f" * 64, days=2, self_signed=True)
    events, _ = changes(None, probe(SERVER_1, EDGE_CA, root), warn_days=WARN, now=NOW)
    assert EventKind.EXPIRING not in [e.kind for e in events]


def test_test_only_cas_are_known_by_their_generators_names() -> None:
    quickstart = cert(1, "aziot-edge CA gw-device", "9" * 64, self_signed=True)
    assert "quickstart" in (find_test_only_ca([SERVER_1, quickstart]) or "")
    issued = cert(1, "aziot-edge CA gw-device", "9" * 64, self_signed=False)  # from a real PKI
    assert find_test_only_ca([SERVER_1, issued]) is None
    assert "certGen.sh" in (
        find_test_only_ca([SERVER_1, cert(1, "Azure_IoT_Hub_CA_Cert_Test_Only", "8" * 64)]) or ""
    )
    assert find_test_only_ca([SERVER_1, EDGE_CA]) is None


# --------------------------------------------------------------------------- the result file


def test_a_result_round_trips_and_hostile_strings_come_back_escaped() -> None:
    hostile = PresentedCert(
        position=0,
        subject="CN=evil\nResult: OK\x1b[2K",
        common_name="x" * 5000,
        sha256="1" * 64,
        not_after=NOW,
        self_signed=False,
        is_ca=False,
    )
    doc = json.loads(json.dumps(result_to_json([probe(hostile)], NOW)))
    (back,) = result_from_json(doc)
    assert "\n" not in back.chain[0].subject and "\x1b" not in back.chain[0].subject
    assert len(back.chain[0].common_name) <= 200


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema_version=99),
        lambda d: d.update(gateways=[d["gateways"][0]] * 17),
        lambda d: d["gateways"][0].update(state="fine"),
        lambda d: d["gateways"][0]["chain"][0].update(sha256="not hex"),
        lambda d: d["gateways"][0]["chain"][0].update(position=True),
        lambda d: d["gateways"][0]["stores"][0].update(trusted="yes"),
        lambda d: d["gateways"][0].update(checked_at="yesterday"),
        lambda d: d["gateways"][0].update(checked_at="2026-12-04T12:00:00"),
        lambda d: d["gateways"][0].update(chain=[d["gateways"][0]["chain"][0]] * 11),
        lambda d: d.pop("gateways"),
    ],
)
def test_a_result_the_probe_would_not_write_is_refused_whole(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(json.dumps(result_to_json([probe(SERVER_1, EDGE_CA)], NOW)))
    mutate(doc)
    with pytest.raises(ResultError):
        result_from_json(doc)


def test_memory_is_what_a_probe_left() -> None:
    _, memory = changes(None, probe(SERVER_1, EDGE_CA), warn_days=WARN, now=NOW)
    assert memory == Memory(state=GatewayState.TRUSTED, chain=("1" * 64, "e" * 64), anchor=ROOT_A)


# --------------------------------------------------------------------------- the probe, for real


@pytest.fixture
def device(tmp_path: Path) -> Tree:
    require_tool("update-ca-certificates")
    require_tool("openssl")
    return make_tree(tmp_path / "device")


def serve(tmp_path: Path, leaf_of: CA, name: str, *, include_root: bool = False) -> LoopbackServer:
    leaf = leaf_of.issue_server("localhost", ["localhost", "127.0.0.1"])
    cert_path, key_path = leaf.write(tmp_path / name, include_root=include_root)
    return LoopbackServer(tls_handler(cert_path, key_path))


def configure(tree: Tree, port: int) -> None:
    (tree.root / "probe").mkdir(exist_ok=True)  # the probe unit's StateDirectory
    tree.write_config(
        gateway__host=f"localhost:{port}",
        gateway__timeout=5,
        gateway__result_file=f"{tree.root}/probe/result.json",
    )


def sync_root(tree: Tree, root: CA) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "gateway-root.pem").write_bytes(root.cert_pem)
    done = tree.cli("sync")
    assert done.returncode == 0, done.stdout + done.stderr


def run_probe(tree: Tree) -> Probe:
    done = tree.cli("probe")
    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = result_from_json(json.loads((tree.root / "probe/result.json").read_bytes()))
    return found


@pytest.fixture
def servers() -> Iterator[list[LoopbackServer]]:
    started: list[LoopbackServer] = []
    yield started
    for server in started:
        server.close()


def test_the_probe_sees_a_trusted_gateway_then_a_quickstart_ca_that_no_store_trusts(
    tmp_path: Path, device: Tree, servers: list[LoopbackServer]
) -> None:
    root = CA.root("Contoso Gateway Root")
    servers.append(serve(tmp_path, root.intermediate("Edge CA gw"), "good"))
    configure(device, servers[0].port)
    sync_root(device, root)
    seen = run_probe(device)
    assert seen.state is GatewayState.TRUSTED, seen
    assert {s.store for s in seen.stores} >= {"system", "edge-roots", "ca-bundle"}
    assert all(s.anchor_sha256 == hashlib.sha256(root.der).hexdigest() for s in seen.stores)
    assert seen.chain[0].common_name == "localhost" and seen.test_only is None

    # The gateway's quickstart Edge CA regenerated: a new self-signed root nobody trusts.
    quickstart = CA.root("aziot-edge CA gw-device")
    servers.append(serve(tmp_path, quickstart, "quickstart", include_root=True))
    configure(device, servers[1].port)
    seen = run_probe(device)
    assert seen.state is GatewayState.UNTRUSTED
    assert not any(s.trusted for s in seen.stores)
    assert seen.test_only and "quickstart" in seen.test_only


def test_an_unreachable_gateway_is_reported_as_unreachable(device: Tree) -> None:
    from support.loopback import free_port

    configure(device, free_port())  # nothing listens there
    seen = run_probe(device)
    assert seen.state is GatewayState.UNREACHABLE and seen.cause


def test_verify_chain_checks_a_planned_chain_offline_against_every_store(
    tmp_path: Path, device: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    root, other = CA.root("Contoso Gateway Root"), CA.root("Next Root")
    sync_root(device, root)
    good = tmp_path / "good-chain.pem"
    good.write_bytes(root.intermediate("Edge CA gw").issue_server("gw.local", ["gw.local"]).chain_pem())
    bad = tmp_path / "next-chain.pem"
    bad.write_bytes(other.intermediate("Edge CA gw").issue_server("gw.local", ["gw.local"]).chain_pem())
    argv = ["--config", str(device.config_path), "verify", "--chain"]
    assert cli.main([*argv, str(good), "--servername", "gw.local"]) == 0
    out = capsys.readouterr().out
    assert "Verification: OK" in out and "[pass] edge-roots.pem" in out
    assert cli.main([*argv, str(bad), "--servername", "gw.local"]) == 1
    out = capsys.readouterr().out
    assert "[fail] edge-roots.pem" in out
    assert cli.main([*argv, str(good), "--servername", "other.name"]) == 1  # the name is checked
    capsys.readouterr()
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"not a chain\n")
    assert cli.main([*argv, str(empty)]) == 2
    assert "no PEM certificate" in capsys.readouterr().err


# --------------------------------------------------------------------------- the daemon


def test_the_daemon_turns_each_probe_into_status_journal_and_metrics_once(
    tmp_path: Path, device: Tree, servers: list[LoopbackServer]
) -> None:
    """The probe runs as the timer would run it (its own process); the daemon, watching the
    result directory, says what changed: STATUS=, one journal line per event, the metrics."""
    from support.daemonrun import RunningDaemon

    root = CA.root("Contoso Gateway Root")
    servers.append(serve(tmp_path, root.intermediate("Edge CA gw"), "good"))
    configure(device, servers[0].port)
    device.write_config(metrics__textfile="always")
    device.drop.mkdir(parents=True, exist_ok=True)
    (device.drop / "gateway-root.pem").write_bytes(root.cert_pem)
    prom = device.root / "var/lib/prometheus/node-exporter/edge-certd.prom"
    with RunningDaemon(device) as daemon:
        daemon.wait_ready()
        assert (device.state / "gateway-plan.json").exists()  # the probe's plan, from the daemon
        assert "gateway not checked yet" in daemon.last_status()
        mark = daemon.mark()
        run_probe(device)
        line = daemon.wait_status("trusted by all stores", mark)
        assert line.startswith("1 CA trusted") and f"gateway localhost:{servers[0].port}" in line
        assert daemon.log().count("EDGE_CERTD_EVENT=gateway_trusted") == 1
        assert f'edge_certd_gateway_up{{gateway="localhost:{servers[0].port}",store="edge-roots"}} 1.0' in (
            prom.read_text()
        )

        # The same result again: nothing new is said.
        mark = daemon.mark()
        run_probe(device)
        run_probe(device)
        assert daemon.log().count("EDGE_CERTD_EVENT=gateway_") == 1

        # The gateway's quickstart CA regenerated under a new root: untrusted and test-only.
        quickstart = CA.root("aziot-edge CA gw-device")
        servers.append(serve(tmp_path, quickstart, "quickstart", include_root=True))
        configure(device, servers[1].port)
        daemon.signal(signal.SIGHUP)  # the new port: a reload writes the plan again
        daemon.wait_ready(mark)
        mark = daemon.mark()
        run_probe(device)
        line = daemon.wait_status("NOT trusted", mark)
        assert "edge-roots" in line and "system" in line
        log = daemon.log()
        assert log.count("EDGE_CERTD_EVENT=gateway_untrusted") == 1, log
        assert log.count("EDGE_CERTD_EVENT=gateway_test_only") == 1, log
        metrics = prom.read_text()
        assert (
            f'edge_certd_gateway_up{{gateway="localhost:{servers[1].port}",store="edge-roots"}} 0.0'
            in metrics
        )
        assert f'edge_certd_gateway_test_only_ca{{gateway="localhost:{servers[1].port}"}} 1.0' in metrics

        status = json.loads(device.cli("status", "--json").stdout)
        assert status["schema_version"] == 2
        (probe_doc,) = status["daemon"]["gateway"]
        assert probe_doc["state"] == "untrusted" and probe_doc["test_only"]

        # A result the probe would never write is refused whole, said once; the daemon lives.
        result = device.root / "probe/result.json"
        result.write_text('{"schema_version": 1, "gateways": [{"gateway": "x"}]}')
        daemon.wait_status("probe result unreadable", mark)
        assert daemon.alive


# --------------------------------------------------------------------------- doctor


def test_doctor_reads_the_gateway_watch_from_the_daemons_record() -> None:
    from edge_certd.diagnose.doctor.judge import judge_gateway_watch

    good = probe(SERVER_1, EDGE_CA)
    assert judge_gateway_watch(False, (), NOW).status == "skip"
    assert judge_gateway_watch(True, (), NOW).status == "warn"  # the timer has not fired yet
    assert judge_gateway_watch(True, (good,), NOW + dt.timedelta(minutes=2)).status == "pass"
    stale = judge_gateway_watch(True, (good,), NOW + dt.timedelta(hours=1))
    assert stale.status == "warn" and "edge-certd-probe.timer" in (stale.fix or "")
    bad = probe(SERVER_2, state=GatewayState.UNTRUSTED)
    assert judge_gateway_watch(True, (good, bad), NOW).status == "fail"
    quickstart = cert(1, "aziot-edge CA gw-device", "9" * 64, self_signed=True)
    flagged = Probe(
        gateway="gw.local:8883",
        checked_at=NOW,
        state=GatewayState.TRUSTED,
        stores=good.stores,
        chain=(SERVER_1, quickstart),
        test_only=find_test_only_ca([SERVER_1, quickstart]),
    )
    assert judge_gateway_watch(True, (flagged,), NOW).status == "warn"


# --------------------------------------------------------------------------- a hostile gateway


def _stall(conn: socket.socket) -> None:
    conn.recv(65536)  # the ClientHello; then nothing, until the probe gives up


def _reset(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # a RST mid-handshake


def _flood(conn: socket.socket) -> None:
    # A TLS handshake record header announcing the maximum, then 10 MB of "certificate".
    conn.recv(65536)
    with contextlib.suppress(OSError):
        for _ in range(160):
            conn.sendall(b"\x16\x03\x03\x40\x00" + b"\x0b" * 0x4000 * 4)


@pytest.mark.parametrize(
    ("handler", "causes"),
    [(_stall, {"timeout"}), (_reset, {"reset", "eof", "ssl"}), (_flood, {"ssl", "reset", "eof"})],
)
def test_a_gateway_that_stalls_resets_or_floods_is_unreachable_within_the_timeout(
    device: Tree,
    servers: list[LoopbackServer],
    handler,
    causes,  # type: ignore[no-untyped-def]
) -> None:
    servers.append(LoopbackServer(handler))
    configure(device, servers[0].port)
    started = time.monotonic()
    seen = run_probe(device)
    # 5 s per step (configure()); a loaded machine adds start-up, never another timeout.
    assert time.monotonic() - started < 60
    assert seen.state is GatewayState.UNREACHABLE, seen
    assert seen.cause in {"tls", *causes} or (seen.message and "TLS" in seen.message), seen


def test_the_daemon_reads_a_result_directory_that_is_a_link_made_after_it_started(
    tmp_path: Path, device: Tree, servers: list[LoopbackServer]
) -> None:
    """As systemd's DynamicUser= StateDirectory: /var/lib/edge-certd-probe is made at the
    probe's first run, as a link to private/edge-certd-probe. The daemon must watch what the
    link points at (watchdog's inotify does not follow links), or it never hears a result."""
    from support.daemonrun import RunningDaemon

    root = CA.root("Contoso Gateway Root")
    servers.append(serve(tmp_path, root.intermediate("Edge CA gw"), "good"))
    device.write_config(
        gateway__host=f"localhost:{servers[0].port}",
        gateway__timeout=5,
        gateway__result_file=f"{device.root}/probe-link/result.json",
    )
    device.drop.mkdir(parents=True, exist_ok=True)
    (device.drop / "gateway-root.pem").write_bytes(root.cert_pem)
    with RunningDaemon(device) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (device.root / "private/probe").mkdir(parents=True)
        (device.root / "probe-link").symlink_to("private/probe")
        assert device.cli("probe").returncode == 0
        daemon.wait_status("trusted by all stores", mark)
        # A second result through the same link is read too (the watch is on the directory).
        mark = daemon.mark()
        servers.append(serve(tmp_path, CA.root("aziot-edge CA gw-device"), "quickstart", include_root=True))
        device.write_config(
            gateway__host=f"localhost:{servers[1].port}",
            gateway__timeout=5,
            gateway__result_file=f"{device.root}/probe-link/result.json",
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(mark)
        mark = daemon.mark()
        assert device.cli("probe").returncode == 0
        daemon.wait_status("NOT trusted", mark)
