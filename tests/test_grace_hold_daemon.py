"""The grace hold in the running daemon, against a real TLS gateway on loopback: a dropped root
the gateway still anchors at stays (journal, STATUS=, metric, status --json say so), and goes
when the gateway moves to another root, when the period ends, at once with grace_days 0, and
at once on `edge-certd remove`.

The probe runs as its timer would run it (`edge-certd probe`, its own process); the gateway
switches chains on the same port between two probes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.loopback import LoopbackServer
from support.tree import Tree, make_tree, require_tool
from test_schemas import validate

from edge_certd.core.gateway import GatewayState, result_from_json


class Gateway:
    """A TLS server on loopback whose chain the test switches between two connections."""

    def __init__(self, tmp_path: Path) -> None:
        self._dir = tmp_path
        self._context: ssl.SSLContext | None = None
        self.server = LoopbackServer(self._handle)

    def serve(self, root: CA, name: str) -> None:
        leaf = root.intermediate(f"Edge CA {name}").issue_server("localhost", ["localhost", "127.0.0.1"])
        cert, key = leaf.write(self._dir / name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._context = context

    def _handle(self, conn: socket.socket) -> None:
        assert self._context is not None
        with self._context.wrap_socket(conn, server_side=True):
            pass


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    found = Gateway(tmp_path)
    yield found
    found.server.close()


@pytest.fixture
def device(tmp_path: Path, gateway: Gateway) -> Tree:
    require_tool("update-ca-certificates")
    require_tool("openssl")
    tree = make_tree(tmp_path / "device")
    (tree.root / "probe").mkdir()
    tree.write_config(
        gateway__host=f"localhost:{gateway.server.port}",
        gateway__timeout=5,
        gateway__result_file=f"{tree.root}/probe/result.json",
        metrics__textfile="always",
    )
    return tree


ROOT_A, ROOT_B = CA.root("Contoso Root A"), CA.root("Contoso Root B")
SHA_A, SHA_B = (hashlib.sha256(r.der).hexdigest() for r in (ROOT_A, ROOT_B))


def probe(tree: Tree, anchor: str) -> None:
    done = tree.cli("probe")
    assert done.returncode == 0, done.stdout + done.stderr
    (seen,) = result_from_json(json.loads((tree.root / "probe/result.json").read_bytes()))
    assert seen.state is GatewayState.TRUSTED and seen.anchor == anchor, seen


def prom(tree: Tree) -> str:
    return (tree.root / "var/lib/prometheus/node-exporter/edge-certd.prom").read_text()


def installed(tree: Tree) -> set[str]:
    return {p.name.rsplit("-", 1)[1][:16] for p in tree.ca_dir.glob("*.crt")}


def held_line(sha: str) -> str:
    return f'edge_certd_ca_held_for_gateway{{sha256="{sha}"}}'


def start_held(tree: Tree, gateway: Gateway, daemon: RunningDaemon) -> str:
    """Roots A and B dropped, the gateway on A and probed, then A's drop file deleted: held."""
    daemon.wait_ready()
    mark = daemon.mark()
    probe(tree, SHA_A)
    daemon.wait_status("trusted by all stores", mark)
    mark = daemon.mark()
    (tree.drop / "root-a.pem").unlink()
    return daemon.wait_synced(mark, status="holding 1 root the gateway still uses")


def drop_both(tree: Tree, gateway: Gateway) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root-a.pem").write_bytes(ROOT_A.cert_pem)
    (tree.drop / "root-b.pem").write_bytes(ROOT_B.cert_pem)
    gateway.serve(ROOT_A, "chain-a")


def test_a_dropped_root_the_gateway_anchors_at_is_held_then_removed_once_the_gateway_moves(
    device: Tree, gateway: Gateway
) -> None:
    drop_both(device, gateway)
    with RunningDaemon(device) as daemon:
        line = start_held(device, gateway, daemon)
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
        assert line.startswith("2 CAs trusted"), line
        assert f"until {until:%Y-%m-%d}" in line or f"until {until - dt.timedelta(days=1):%Y-%m-%d}" in line
        assert SHA_A[:16] in installed(device) and ROOT_A.cert_pem.strip() in device.edge_roots.read_bytes()
        log = daemon.log()
        assert log.count("EDGE_CERTD_EVENT=ca_held_for_gateway") == 1, log
        assert "EDGE_CERTD_EVENT=removed" not in log
        metric = next(x for x in prom(device).splitlines() if x.startswith(held_line(SHA_A)))
        assert abs(float(metric.split()[-1]) - until.timestamp()) < 600
        status = json.loads(device.cli("status", "--json").stdout)
        validate("status", status)  # against the strict copy of its schema
        (hold,) = status["held_for_gateway"]
        assert hold["sha256"] == SHA_A and hold["gateway"] == f"localhost:{gateway.server.port}"
        text = device.cli("status").stdout
        assert f"held for gateway localhost:{gateway.server.port}: {SHA_A[:16]}" in text
        doctor = device.cli("doctor").stdout
        assert "[warn] roots held for the gateway: " in doctor and SHA_A[:16] in doctor, doctor

        # The same probe again, and a rescan: still held, said once.
        mark = daemon.mark()
        probe(device, SHA_A)
        synced = device.cli("sync")
        (kept,) = [x for x in synced.stdout.splitlines() if x.startswith("  kept CN=Contoso Root A")]
        assert f"(sha256 {SHA_A[:16]}…): its source is gone" in kept and "still anchors at it" in kept
        daemon.wait_synced(mark, status="holding 1 root")
        assert daemon.log().count("EDGE_CERTD_EVENT=ca_held_for_gateway") == 1

        # The gateway moves to root B: the next probe releases A, and it is removed.
        gateway.serve(ROOT_B, "chain-b")
        mark = daemon.mark()
        probe(device, SHA_B)
        line = daemon.wait_synced(mark, status=lambda s: "holding" not in s and s.startswith("1 CA trusted"))
        assert installed(device) == {SHA_B[:16]}
        assert ROOT_A.cert_pem.strip() not in device.edge_roots.read_bytes()
        log = daemon.log()
        assert log.count("EDGE_CERTD_EVENT=ca_hold_released") == 1, log
        assert "REASON=gateway_moved" in log and log.count("EDGE_CERTD_EVENT=removed") == 1
        assert held_line(SHA_A) not in prom(device)
        assert json.loads(device.cli("status", "--json").stdout)["held_for_gateway"] == []
        assert not (device.state / "gateway-holds.json").exists()
        assert "roots held for the gateway" not in device.cli("doctor").stdout


def test_a_hold_keeps_its_start_across_a_restart_and_ends_when_the_period_does(
    device: Tree, gateway: Gateway
) -> None:
    """The period's end is the daemon's own timer (no sync is asked for). Seven days cannot
    pass in a test, so the hold's start is moved back in its state file, under the state lock,
    as if the device had been holding for 7 days less 3 seconds."""
    drop_both(device, gateway)
    holds = device.state / "gateway-holds.json"
    with RunningDaemon(device) as daemon:
        start_held(device, gateway, daemon)
        since = json.loads(holds.read_text())["holds"][0]["since"]
    with RunningDaemon(device) as daemon:
        daemon.wait_ready()
        line = daemon.last_status()
        assert "holding 1 root" in line, line
        assert json.loads(holds.read_text())["holds"][0]["since"] == since
        assert "EDGE_CERTD_EVENT=ca_held_for_gateway" not in daemon.log()  # said once, before

        with daemon.hold_lock():
            doc = json.loads(holds.read_text())
            back = dt.datetime.now(dt.UTC) - dt.timedelta(days=7) + dt.timedelta(seconds=3)
            doc["holds"][0]["since"] = back.isoformat().replace("+00:00", "Z")
            holds.write_text(json.dumps(doc))
            mark = daemon.mark()
        # The next sync takes the moved start; the timer fires at the hold's new end.
        assert device.cli("sync").returncode == 0
        daemon.wait_synced(mark, status=lambda s: "holding" not in s and s.startswith("1 CA trusted"))
        assert installed(device) == {SHA_B[:16]}
        log = daemon.log()
        assert "REASON=grace_ended" in log, log
        assert log.count("EDGE_CERTD_EVENT=removed") == 1
        assert not holds.exists()


def test_with_grace_days_0_a_dropped_root_goes_at_once(device: Tree, gateway: Gateway) -> None:
    device.write_config(gateway__grace_days=0)
    drop_both(device, gateway)
    with RunningDaemon(device) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        probe(device, SHA_A)
        daemon.wait_status("trusted by all stores", mark)
        mark = daemon.mark()
        (device.drop / "root-a.pem").unlink()
        line = daemon.wait_synced(mark, status=lambda s: s.startswith("1 CA trusted"))
        assert "holding" not in line
        assert installed(device) == {SHA_B[:16]}
        assert "ca_held_for_gateway" not in daemon.log()
        assert "edge_certd_ca_held_for_gateway" not in prom(device)


def test_an_operator_remove_takes_a_held_root_at_once(device: Tree, gateway: Gateway) -> None:
    drop_both(device, gateway)
    with RunningDaemon(device) as daemon:
        start_held(device, gateway, daemon)
        mark = daemon.mark()
        done = device.cli("remove", SHA_A)
        assert done.returncode == 0, done.stdout + done.stderr
        line = daemon.wait_synced(mark, status=lambda s: "holding" not in s)
        assert line.startswith("1 CA trusted"), line
        assert installed(device) == {SHA_B[:16]}
        log = daemon.log()
        assert "REASON=operator_removed" in log, log
        # And the next probe, still anchored at A (the gateway did not move), brings nothing back.
        mark = daemon.mark()
        probe_done = device.cli("probe")
        assert probe_done.returncode == 0
        device.cli("sync")
        daemon.wait_synced(mark)
        assert installed(device) == {SHA_B[:16]}
        assert daemon.log().count("EDGE_CERTD_EVENT=ca_held_for_gateway") == 1
