"""The spare `openssl verify` (diagnose/verify/runner.Spare): started while the stores are
read and the gateway answers, fed by the first store that needs a run of its shape, and never
left running, whatever the gateway did. Verdicts are OpenSSL's, against a real TLS server on
loopback.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA, Issued
from support.loopback import LoopbackServer, tls_handler

from edge_certd.diagnose.verify import anchors, runner
from edge_certd.diagnose.verify.check import verify_gateway
from edge_certd.diagnose.verify.model import TrustStore, VerifyRequest


@pytest.fixture
def spares(monkeypatch: pytest.MonkeyPatch) -> list[runner.Spare]:
    """Every spare a check starts."""
    started: list[runner.Spare] = []

    class Recorded(runner.Spare):
        def __init__(self, openssl: str) -> None:
            super().__init__(openssl)
            started.append(self)

    monkeypatch.setattr(runner, "Spare", Recorded)
    return started


def serving(tmp_path: Path, leaf: Issued) -> Iterator[int]:
    cert, key = leaf.write(tmp_path / "gateway")
    server = LoopbackServer(tls_handler(cert, key))
    try:
        yield server.port
    finally:
        server.close()


def request(port: int, *paths: Path) -> VerifyRequest:
    stores = tuple(
        TrustStore(key=f"store{i}", title=path.name, used_by="tests", path=str(path))
        for i, path in enumerate(paths)
    )
    return VerifyRequest(host="127.0.0.1", port=port, servername="gw", stores=stores, timeout=5)


def children() -> list[str]:
    """The processes this test process has started and not reaped, by name."""
    found = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as handle:
            for pid in handle.read().split():
                with open(f"/proc/{pid}/comm") as comm:
                    found.append(comm.read().strip())
    return found


def assert_spent(spare: runner.Spare) -> None:
    assert spare.run is not None and spare.run.proc.returncode is not None  # ended and reaped
    assert "openssl" not in children()


def test_the_spare_is_the_run_when_the_chain_has_an_intermediate(
    tmp_path: Path, spares: list[runner.Spare]
) -> None:
    root = CA.root("Spare Root")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(CA.root("Other").cert_pem + root.cert_pem)
    for port in serving(tmp_path, root.intermediate("Edge CA").issue_server("gw", ["gw"])):
        report = verify_gateway(request(port, roots, roots))
    assert [check.verified for _, check in report.stores] == [True, True], report
    (spare,) = spares
    assert spare.fed  # both stores hand over the same root: one run, the spare
    assert_spent(spare)


def test_a_chain_of_one_certificate_is_checked_by_a_run_of_its_own(
    tmp_path: Path, spares: list[runner.Spare]
) -> None:
    root, stranger = CA.root("Spare Root"), CA.root("Stranger")
    trusting, other = tmp_path / "roots.pem", tmp_path / "other.pem"
    trusting.write_bytes(root.cert_pem)
    other.write_bytes(stranger.cert_pem)
    for port in serving(tmp_path, root.issue_server("gw", ["gw"])):  # the leaf alone
        report = verify_gateway(request(port, trusting, other))
    checks = [check for _, check in report.stores]
    assert [(c.verified, c.error_code) for c in checks] == [(True, None), (False, 20)]
    (spare,) = spares
    assert not spare.fed  # openssl verify needs at least one untrusted certificate on a pipe
    assert_spent(spare)


def test_a_gateway_that_fails_the_handshake_leaves_no_openssl_running(
    tmp_path: Path, spares: list[runner.Spare]
) -> None:
    def not_tls(conn: socket.socket) -> None:
        conn.recv(4096)  # the ClientHello: the spare is starting by now
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    roots = tmp_path / "roots.pem"
    roots.write_bytes(CA.root("Spare Root").cert_pem)
    server = LoopbackServer(not_tls)
    try:
        report = verify_gateway(request(server.port, roots))
    finally:
        server.close()
    assert not report.ok and not report.stores
    (spare,) = spares
    assert not spare.fed
    assert_spent(spare)


def test_a_spare_that_stops_reading_is_killed_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spares: list[runner.Spare]
) -> None:
    wedged = tmp_path / "openssl"
    wedged.write_text("#!/bin/sh\nexec sleep 60\n")
    wedged.chmod(0o755)
    monkeypatch.setattr(anchors, "find_openssl", lambda: str(wedged))
    monkeypatch.setattr(anchors, "_OPENSSL_TIMEOUT", 0.5)
    root = CA.root("Spare Root")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(root.cert_pem)
    leaf = root.intermediate("Edge CA").issue_server("gw", ["gw"])
    for port in serving(tmp_path, leaf):
        report = verify_gateway(request(port, roots))
    ((_, check),) = report.stores
    assert check.problem is not None and "timed out after 0.5 seconds" in check.problem
    (spare,) = spares
    assert spare.fed
    assert_spent(spare)


def test_feeding_a_spare_that_never_reads_gives_up_at_the_deadline(tmp_path: Path) -> None:
    wedged = tmp_path / "openssl"
    wedged.write_text("#!/bin/sh\nexec sleep 60\n")
    wedged.chmod(0o755)
    spare = runner.Spare(str(wedged))
    try:
        deadline = time.monotonic() + 0.5
        assert spare.takes(str(wedged), None, True)
        run = spare.feed(b"x" * (1 << 20), b"y", b"z", deadline)  # far more than a pipe holds
        assert time.monotonic() < deadline + 5
        assert run.outcome(deadline) is None  # killed, not waited for
    finally:
        spare.close()
    assert_spent(spare)


def test_an_openssl_that_cannot_start_gives_no_spare_and_keeps_no_file(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    spare = runner.Spare(str(tmp_path / "no-openssl-here"))
    assert spare.run is None and not spare.takes(str(tmp_path / "no-openssl-here"), None, True)
    spare.close()
    assert len(os.listdir("/proc/self/fd")) == before
