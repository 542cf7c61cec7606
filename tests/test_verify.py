"""`verify` against real loopback servers: Python ssl, openssl s_server and mosquitto.

Chains are made at test time: root -> intermediate -> edge CA -> server. Every
server a test starts is stopped in a `finally`, and a missing tool fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certs import CA, Issued, utcnow
from support.loopback import LoopbackServer, free_port, tls_handler

from edge_certd import cli
from edge_certd.config import GatewayConfig
from edge_certd.core.errors import UsageError
from edge_certd.diagnose.connstr import ConnectionStringError, parse_connection_string
from edge_certd.diagnose.verify import anchors as verify_anchors
from edge_certd.diagnose.verify.check import verify_gateway
from edge_certd.diagnose.verify.model import TrustStore, VerifyReport, VerifyRequest
from edge_certd.diagnose.verify.render import render_text, report_to_json
from edge_certd.diagnose.verify.request import ca_file_store, parse_host_port, request_from_args

DROP = "/var/lib/edge-certd/drop"
TIMEOUT = 3.0


# --------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class Pki:
    root: CA
    edge: CA
    server: Issued
    root_pem: Path
    other_root_pem: Path
    server_pem: Path  # leaf + edge CA + intermediate, no root (what IoT Edge serves)
    server_key: Path
    dir: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root = CA.root("Gateway Test Root")
    edge = root.intermediate("Gateway Intermediate").intermediate("Edge CA gw01")
    server = edge.issue_server("gw01", ["localhost", "gw01.example.test", "127.0.0.1", "::1"])
    root_pem = d / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    other = d / "other-root.pem"
    other.write_bytes(CA.root("Unrelated Root").cert_pem)
    server_pem, server_key = server.write(d / "server")
    return Pki(root, edge, server, root_pem, other, server_pem, server_key, d)


def _issue(
    pki: Pki,
    name: str,
    sans: list[str],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    leaf = pki.edge.issue_server("gw01", sans, not_before=not_before, not_after=not_after)
    return leaf.write(pki.dir / name)


# --------------------------------------------------------------------------- servers


Serve = Callable[..., LoopbackServer]
Spawn = Callable[[list[str], int, str], None]


@pytest.fixture
def serve() -> Iterator[Serve]:
    started: list[LoopbackServer] = []

    def start(handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> LoopbackServer:
        server = LoopbackServer(handle, host)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


def wait_for_port(proc: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on port {port}")


def need(tool: str) -> str:
    # Debian puts mosquitto in /usr/sbin, which is not on every user's PATH.
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
    if path is None:
        pytest.fail(f"{tool} is required for this test and is not installed")
    return path


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a server process, wait until it listens, and always kill it afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], port: int, what: str) -> None:
        log = tmp_path / f"{Path(argv[0]).name}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        procs.append(proc)
        wait_for_port(proc, port, what, log)

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def pem_store(path: Path, key: str = "edge-roots") -> TrustStore:
    """A runtime's PEM store, as `default_stores` makes them."""
    return TrustStore(key=key, title=path.name, used_by="the test's runtime", path=str(path))


def check(host: str, port: int, ca: Path, *, servername: str | None = None) -> VerifyReport:
    """verify with `--ca ca`: the one store is that file."""
    request = VerifyRequest(
        host=host,
        port=port,
        servername=servername,
        stores=(ca_file_store(str(ca)),),
        drop_dir=DROP,
        timeout=TIMEOUT,
    )
    report = verify_gateway(request)
    render_text(report)  # every report must render
    json.dumps(report_to_json(report))  # and serialise
    return report


def statuses(report: VerifyReport) -> dict[str, str]:
    return {s.name: s.status for s in report.steps}


def summary(report: VerifyReport, name: str) -> str:
    step = report.step(name)
    assert step is not None, f"no step {name}"
    return step.summary


# --------------------------------------------------------------------------- good chains


def test_good_chain_passes_with_sni_and_hostname_in_san(pki: Pki, serve: Serve) -> None:
    sni: list[str | None] = []
    server = serve(tls_handler(pki.server_pem, pki.server_key, sni))
    report = check("localhost", server.port, pki.root_pem)
    assert report.ok, render_text(report)
    assert report.diagnosis is None
    assert set(statuses(report).values()) == {"pass"}
    assert sni == ["localhost"]
    assert [c.subject.split(",")[0] for c in report.chain] == [
        "CN=gw01",
        "CN=Edge CA gw01",
        "CN=Gateway Intermediate",
    ]
    text = render_text(report)
    assert "\nVerification: OK\n" in text
    assert "localhost matches SAN DNS:localhost" in text
    assert "[pass] --ca file: trusts the chain, anchored at CN=Gateway Test Root" in text
    assert "Result: OK" in text
    # Every address this machine's resolver gives, in its order: Debian 13's /etc/hosts maps
    # localhost to ::1 as well, the Debian 12 CI machine's to 127.0.0.1 only.
    answer = socket.getaddrinfo("localhost", server.port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(a[4][0]) for a in answer))
    assert "127.0.0.1" in addresses, addresses
    assert summary(report, "dns") == "localhost -> " + ", ".join(addresses)
    assert summary(report, "tls").startswith("TLSv1.")


def test_good_chain_passes_against_openssl_s_server(pki: Pki, spawn: Spawn) -> None:
    openssl = need("openssl")
    leaf, key = pki.server.write(pki.dir / "leaf-only")
    leaf.write_bytes(pki.server.cert_pem)
    chain = pki.dir / "chain.pem"
    chain.write_bytes(pki.server.chain_pem()[len(pki.server.cert_pem) :])
    port = free_port()
    spawn(
        [
            openssl,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(leaf),
            "-key",
            str(key),
            "-cert_chain",
            str(chain),
            "-www",
        ],
        port,
        "openssl s_server",
    )
    report = check("127.0.0.1", port, pki.root_pem, servername="gw01.example.test")
    assert report.ok, render_text(report)
    assert report.servername == "gw01.example.test"
    assert len(report.chain) == 3
    assert report.verification == "Verification: OK"


def test_ipv6_loopback_with_bracketed_port(pki: Pki, serve: Serve) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key), host="::1")
    request = request_from_args(
        f"[::1]:{server.port}",
        None,
        None,
        str(pki.root_pem),
        None,
        TIMEOUT,
        GatewayConfig(),
        [],
        DROP,
    )
    report = verify_gateway(request)
    assert report.ok, render_text(report)
    assert summary(report, "hostname") == "::1 matches SAN IP:::1"
    assert f"Verifying [::1]:{server.port}" in render_text(report)


@pytest.fixture
def mosquitto(pki: Pki, spawn: Spawn) -> int:
    binary = need("mosquitto")
    port = free_port()
    conf = pki.dir / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"certfile {pki.server_pem}\n"
        f"keyfile {pki.server_key}\n"
        f"cafile {pki.root_pem}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stdout\n"
        # Stay root: the keys live in a root-only temp dir.
        "user root\n"
    )
    spawn([binary, "-c", str(conf)], port, "mosquitto")
    return port


def test_mosquitto_tls_listener_verifies_as_the_mqtts_gateway(pki: Pki, mosquitto: int) -> None:
    request = request_from_args(
        None,
        "mqtts",
        None,
        str(pki.root_pem),
        "localhost",
        TIMEOUT,
        GatewayConfig(host=f"127.0.0.1:{mosquitto}"),
        [],
        DROP,
    )
    good = verify_gateway(request)
    assert good.ok, render_text(good)
    assert good.protocol == "mqtts" and good.port == mosquitto

    # The same broker, but this device lacks the root: the failure names it.
    bad = verify_gateway(
        request_from_args(
            f"localhost:{mosquitto}",
            "mqtts",
            None,
            None,
            None,
            TIMEOUT,
            GatewayConfig(),
            [pem_store(pki.other_root_pem)],
            DROP,
        )
    )
    assert not bad.ok
    assert bad.diagnosis is not None and bad.diagnosis.cause == "untrusted-root"


# --------------------------------------------------------------------------- chains that fail


def test_untrusted_root_names_the_missing_issuer(pki: Pki, serve: Serve) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    report = check("localhost", server.port, pki.other_root_pem)
    assert not report.ok
    assert report.verification == "Verification error: unable to get local issuer certificate (--ca file)"
    assert statuses(report)["tls"] == "pass"  # the handshake itself worked
    assert statuses(report)["store:ca"] == "fail"
    assert len(report.chain) == 3  # and the presented chain is still shown
    diag = report.diagnosis
    assert diag is not None and diag.cause == "untrusted-root"
    assert (
        "whose issuer CN=Gateway Test Root,O=edge-certd tests is not a trusted CA in --ca file"
        in diag.message
    )
    assert DROP in diag.fix and "CN=Gateway Test Root" in diag.fix
    text = render_text(report)
    assert "\nVerification error: unable to get local issuer certificate (--ca file)\n" in text
    assert "Result: FAILED" in text


def test_the_handshake_happens_once_whatever_the_number_of_stores(pki: Pki, serve: Serve) -> None:
    # The chain is collected once, with verification off, then verified against each store.
    accepted: list[int] = []
    handle = tls_handler(pki.server_pem, pki.server_key)

    def counting(conn: socket.socket) -> None:
        accepted.append(1)
        handle(conn)

    server = serve(counting)
    stores = (
        pem_store(pki.root_pem, "system"),
        pem_store(pki.other_root_pem, "edge-roots"),
        pem_store(pki.root_pem, "ca-bundle"),
    )
    report = verify_gateway(
        VerifyRequest(host="localhost", port=server.port, stores=stores, drop_dir=DROP, timeout=TIMEOUT)
    )
    assert len(accepted) == 1
    assert [(s.name, s.status) for s in report.store_steps] == [
        ("store:system", "pass"),
        ("store:edge-roots", "fail"),
        ("store:ca-bundle", "pass"),
    ]
    assert not report.ok


def test_without_the_openssl_command_no_store_is_called_trusted(
    pki: Pki, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_anchors, "find_openssl", lambda: None)
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    report = check("localhost", server.port, pki.root_pem)
    assert not report.ok
    assert statuses(report)["store:ca"] == "fail"
    assert "the openssl command is not installed" in summary(report, "store:ca")
    assert report.diagnosis is not None and report.diagnosis.cause == "cannot-check"
    assert "apt install openssl" in report.diagnosis.fix


def test_root_sent_by_the_server_but_not_trusted_is_named(pki: Pki, serve: Serve) -> None:
    full = pki.dir / "full-chain.pem"
    full.write_bytes(pki.server.chain_pem(include_root=True))
    server = serve(tls_handler(full, pki.server_key))
    report = check("localhost", server.port, pki.other_root_pem)
    assert (
        report.verification == "Verification error: self-signed certificate in certificate chain (--ca file)"
    )
    assert report.diagnosis is not None
    assert "sent its root CA CN=Gateway Test Root" in report.diagnosis.message


def test_explicit_ca_file_is_named_in_the_diagnosis_and_never_to_be_edited(pki: Pki, serve: Serve) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    report = check("localhost", server.port, pki.other_root_pem)
    assert report.diagnosis is not None
    assert str(pki.other_root_pem) in report.diagnosis.message
    # The fix names what a person may do, not an edit of the file they pointed at.
    assert str(pki.other_root_pem) not in report.diagnosis.fix
    assert report.diagnosis.fix.startswith("pass --ca a PEM file that holds the root CA CN=Gateway Test Root")


def test_missing_trust_files_say_so_instead_of_blaming_the_root(
    pki: Pki, serve: Serve, tmp_path: Path
) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    missing = tmp_path / "edge-roots.pem"
    request = VerifyRequest(
        host="localhost", port=server.port, stores=(pem_store(missing),), drop_dir=DROP, timeout=TIMEOUT
    )
    report = verify_gateway(request)
    assert report.diagnosis is not None and report.diagnosis.cause == "no-trust"
    assert f"edge-roots.pem ({missing}), which the test's runtime read, not found" in report.diagnosis.message
    assert "edge-certd sync" in report.diagnosis.fix
    assert report.verification == "Verification error: not found (edge-roots.pem)"


def test_wrong_hostname_lists_the_names_in_the_certificate(pki: Pki, serve: Serve) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    report = check("127.0.0.1", server.port, pki.root_pem, servername="mygateway.contoso.com")
    assert statuses(report)["store:ca"] == "pass"  # trust is fine, only the name is wrong
    assert statuses(report)["hostname"] == "fail"
    assert report.verification is not None and report.verification.startswith("Verification error: hostname")
    diag = report.diagnosis
    assert diag is not None and diag.cause == "hostname-mismatch"
    assert diag.message == (
        "the certificate names DNS:localhost, DNS:gw01.example.test, IP:127.0.0.1, IP:::1 "
        "but you connected to mygateway.contoso.com"
    )
    assert "GatewayHostName" in diag.fix


@pytest.mark.parametrize(
    ("servername", "ok"),
    [
        ("gw01.example.test", True),
        ("GW01.Example.Test", True),
        ("a.gw01.example.test", False),
        ("example.test", False),
    ],
)
def test_wildcard_san_matches_exactly_one_label(pki: Pki, serve: Serve, servername: str, ok: bool) -> None:
    cert, key = _issue(pki, "wildcard", ["*.example.test"])
    server = serve(tls_handler(cert, key))
    report = check("127.0.0.1", server.port, pki.root_pem, servername=servername)
    assert statuses(report)["hostname"] == ("pass" if ok else "fail")


def test_certificate_without_san_fails_the_hostname_check(pki: Pki, serve: Serve) -> None:
    cert, key = _issue(pki, "no-san", [])
    server = serve(tls_handler(cert, key))
    report = check("localhost", server.port, pki.root_pem)
    assert report.diagnosis is not None and report.diagnosis.cause == "no-san"


def test_expired_server_certificate_is_named_with_its_end_date(pki: Pki, serve: Serve) -> None:
    end = (utcnow() - dt.timedelta(days=3)).replace(microsecond=0)
    cert, key = _issue(pki, "expired", ["localhost"], not_before=end - dt.timedelta(days=90), not_after=end)
    server = serve(tls_handler(cert, key))
    report = check("localhost", server.port, pki.root_pem)
    assert report.verification == "Verification error: certificate has expired (--ca file)"
    diag = report.diagnosis
    assert diag is not None and diag.cause == "expired"
    assert f"expired on {end:%Y-%m-%dT%H:%M:%SZ}" in diag.message
    assert statuses(report)["expiry"] == "fail"


def test_not_yet_valid_certificate_blames_the_device_clock(pki: Pki, serve: Serve) -> None:
    start = (utcnow() + dt.timedelta(days=400)).replace(microsecond=0)
    cert, key = _issue(
        pki, "future", ["localhost"], not_before=start, not_after=start + dt.timedelta(days=90)
    )
    server = serve(tls_handler(cert, key))
    before = utcnow()
    report = check("localhost", server.port, pki.root_pem)
    assert report.verification == "Verification error: certificate is not yet valid (--ca file)"
    diag = report.diagnosis
    assert diag is not None and diag.cause == "not-yet-valid"
    assert f"not valid until {start:%Y-%m-%dT%H:%M:%SZ}" in diag.message
    assert f"clock reads {before:%Y-%m-%d}" in diag.message
    assert "clock is likely wrong" in diag.fix


def test_certificate_expiring_soon_warns_but_passes(pki: Pki, serve: Serve) -> None:
    cert, key = _issue(pki, "soon", ["localhost"], not_after=utcnow() + dt.timedelta(days=5))
    server = serve(tls_handler(cert, key))
    report = check("localhost", server.port, pki.root_pem)
    assert report.ok, render_text(report)
    assert statuses(report)["expiry"] == "warn"
    assert render_text(report).endswith("Result: OK, with 1 warning (warnings do not fail the check)\n")
    as_json = report_to_json(report)
    assert as_json["ok"] is True and as_json["warnings"] == ["expiry"]


def test_expiring_soon_exits_0_from_the_command_line(
    pki: Pki, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Decision: only a failure makes verify exit non-zero; a warning is printed, not fatal.
    cert, key = _issue(pki, "soon-cli", ["localhost"], not_after=utcnow() + dt.timedelta(days=5))
    server = serve(tls_handler(cert, key))
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\nexpiry:\n  warn_days: [30]\n")
    code = cli.main(
        [
            "--config",
            str(config),
            "verify",
            f"localhost:{server.port}",
            "--ca",
            str(pki.root_pem),
            "--timeout",
            str(TIMEOUT),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[warn] certificate expiry: expires within 30 days" in out


def test_a_failed_step_exits_1_from_the_command_line(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    code = cli.main(
        [
            "--config",
            str(config),
            "verify",
            f"127.0.0.1:{free_port()}",
            "--ca",
            str(pki.root_pem),
            "--timeout",
            str(TIMEOUT),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["ok"] is False and out["diagnosis"]["cause"] == "connection-refused"


# --------------------------------------------------------------------------- network failures


def test_closed_port_says_connection_refused_and_names_the_firewall_ports(pki: Pki) -> None:
    port = free_port()
    report = check("127.0.0.1", port, pki.root_pem)
    diag = report.diagnosis
    assert diag is not None and diag.cause == "connection-refused"
    assert f"connection refused on port {port}" in diag.message
    assert "8883" in diag.fix and "5671" in diag.fix and "443" in diag.fix
    assert statuses(report)["tls"] == "skip"


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"\x00\x01garbage\xff" * 8],
    ids=["http", "garbage"],
)
def test_plain_tcp_server_is_reported_as_not_speaking_tls(pki: Pki, serve: Serve, reply: bytes) -> None:
    def answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()

    server = serve(answer)
    report = check("localhost", server.port, pki.root_pem)
    diag = report.diagnosis
    assert diag is not None and diag.cause == "not-tls", render_text(report)
    assert "did not speak TLS" in diag.message
    if reply.startswith(b"HTTP"):
        assert "HTTP/1.1 400 Bad Request" in diag.message
    assert statuses(report)["store"] == "skip"


def test_server_that_closes_at_once_is_reported(pki: Pki, serve: Serve) -> None:
    server = serve(lambda conn: conn.close())
    report = check("localhost", server.port, pki.root_pem)
    assert report.diagnosis is not None and report.diagnosis.cause == "handshake-closed"


def test_server_that_accepts_and_hangs_hits_the_handshake_timeout(pki: Pki, serve: Serve) -> None:
    server = serve(lambda conn: None)  # holds the connection open, says nothing
    started = time.monotonic()
    report = verify_gateway(
        VerifyRequest(
            host="localhost", port=server.port, stores=(ca_file_store(str(pki.root_pem)),), timeout=1
        )
    )
    # Far below a hang, far above any scheduling noise.
    assert time.monotonic() - started < 20
    assert statuses(report)["tcp"] == "pass"
    diag = report.diagnosis
    assert diag is not None and diag.cause == "handshake-timeout"
    assert "accepted the TCP connection but did not answer" in diag.message


def test_invalid_name_fails_at_dns_without_waiting(pki: Pki) -> None:
    report = check("gateway.invalid", 8883, pki.root_pem)
    assert statuses(report)["dns"] == "fail"
    # Answered without asking a resolver at all, rather than timed.
    assert "RFC 6761" in render_text(report)
    assert statuses(report)["tcp"] == "skip"
    diag = report.diagnosis
    assert diag is not None and diag.cause == "dns"
    assert "/etc/hosts" in diag.fix and "gateway.invalid" in diag.fix


# --------------------------------------------------------------------------- connection strings

SECRET = "c2VjcmV0LWtleS13aXRoLXBhZGRpbmc="


def test_connection_string_without_gateway_hostname_is_the_diagnosis(pki: Pki) -> None:
    cs = f"HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={SECRET}"
    request = request_from_args(None, None, cs, None, None, None, GatewayConfig(), [], DROP)
    assert request.host is None
    report = verify_gateway(request)
    assert not report.ok
    diag = report.diagnosis
    assert diag is not None and diag.cause == "no-gateway-hostname"
    assert "bypass the gateway" in diag.message and "myhub.azure-devices.net" in diag.message
    text = render_text(report) + json.dumps(report_to_json(report))
    assert SECRET not in text
    assert "SharedAccessKey=<redacted>" in text


def test_gateway_hostname_from_the_connection_string_is_verified(
    pki: Pki, serve: Serve, tmp_path: Path
) -> None:
    server = serve(tls_handler(pki.server_pem, pki.server_key))
    conn_file = tmp_path / "device.conn"
    conn_file.write_text(
        f"HostName=myhub.azure-devices.net;DeviceId=dev1;SharedAccessKey={SECRET};GatewayHostName=localhost\n"
    )
    gateway = GatewayConfig(port=server.port, connection_string_file=str(conn_file))
    request = request_from_args(None, None, None, None, None, None, gateway, [pem_store(pki.root_pem)], DROP)
    assert (request.host, request.port) == ("localhost", server.port)
    report = verify_gateway(request)
    assert report.ok, render_text(report)
    assert statuses(report)["connection_string"] == "pass"
    out = json.dumps(report_to_json(report))
    assert SECRET not in out and SECRET not in render_text(report)
    assert json.loads(out)["ok"] is True


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gw", ("gw", None)),
        ("gw.contoso.com:8883", ("gw.contoso.com", 8883)),
        ("10.0.0.4:443", ("10.0.0.4", 443)),
        ("[::1]:8883", ("::1", 8883)),
        ("[fe80::1]", ("fe80::1", None)),
        ("::1", ("::1", None)),
    ],
)
def test_host_port_parsing(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["", ":8883", "gw:0", "gw:70000", "gw:mqtt", "[::1", "[::1]8883"])
def test_bad_host_port_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_host_port(text)


@pytest.mark.parametrize(("protocol", "port"), [("mqtts", 8883), ("amqps", 5671), ("https", 443)])
def test_port_defaults_by_protocol(protocol: str, port: int) -> None:
    request = request_from_args("gw", protocol, None, None, None, None, GatewayConfig(), [], DROP)
    assert (request.port, request.protocol) == (port, protocol)


def test_defaults_come_from_the_gateway_config() -> None:
    gateway = GatewayConfig(host="gw.local", protocols=["amqps"], servername="gw.example", timeout=4.0)
    request = request_from_args(
        None,
        None,
        None,
        None,
        None,
        None,
        gateway,
        [
            pem_store(Path("/var/lib/edge-certd/bundles/edge-roots.pem")),
            pem_store(Path("/etc/ssl/x.crt"), "system"),
        ],
        DROP,
    )
    assert (request.host, request.port, request.protocol) == ("gw.local", 5671, "amqps")
    assert request.servername == "gw.example" and request.timeout == 4.0
    assert [s.path for s in request.stores] == [
        "/var/lib/edge-certd/bundles/edge-roots.pem",
        "/etc/ssl/x.crt",
    ]
    assert not request.ca_explicit


def test_no_host_anywhere_is_a_clear_usage_error() -> None:
    with pytest.raises(UsageError, match="no gateway to verify"):
        request_from_args(None, None, None, None, None, None, GatewayConfig(), [], DROP)


def test_missing_ca_file_and_unknown_protocol_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        request_from_args("gw", None, None, str(tmp_path / "nope.pem"), None, None, GatewayConfig(), [], DROP)
    with pytest.raises(UsageError, match="unknown protocol"):
        request_from_args("gw", "mqtt", None, None, None, None, GatewayConfig(), [], DROP)


def test_unreadable_or_malformed_connection_string_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConnectionStringError, match="cannot read"):
        request_from_args(
            None,
            None,
            None,
            None,
            None,
            None,
            GatewayConfig(),
            [],
            DROP,
            connection_string_file=str(tmp_path / "missing"),
        )
    bad = tmp_path / "bad.conn"
    bad.write_text("DeviceId=dev1\n")
    with pytest.raises(ConnectionStringError, match="HostName is missing"):
        request_from_args(
            None,
            None,
            None,
            None,
            None,
            None,
            GatewayConfig(),
            [],
            DROP,
            connection_string_file=str(bad),
        )


def test_explicit_host_wins_and_a_differing_gateway_hostname_warns() -> None:
    cs = "HostName=hub;DeviceId=d;GatewayHostName=gw.other"
    request = request_from_args("gw.invalid", None, cs, None, None, 1.0, GatewayConfig(), [], DROP)
    assert request.host == "gw.invalid"
    assert request.connection_string == parse_connection_string(cs)
    report = verify_gateway(request)
    step = report.step("connection_string")
    assert step is not None and step.status == "warn"
    assert report.diagnosis is not None and report.diagnosis.cause == "dns"


# --------------------------------------------------------------------------- hostile gateways

HOSTILE_CN = "gw01\n Result: OK\r\x1b[2K\x1b[1A"
HOSTILE_DNS = "x\x1b[2K.example.test"


def _control_characters(text: str) -> set[str]:
    return {ch for ch in text if not ch.isprintable() and ch != "\n"}


@pytest.mark.parametrize("trusted", ["root", "other"])
def test_gateway_names_cannot_forge_or_hide_the_result_line(
    pki: Pki, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], trusted: str
) -> None:
    # The subject, the issuer chain and the SAN are the gateway's to choose: a newline would
    # print a second "Result: OK", and ESC [2K / ESC [1A would erase the real one on a terminal.
    leaf = pki.edge.issue_server(HOSTILE_CN, [HOSTILE_DNS, "localhost"])
    cert, key = leaf.write(tmp_path / "hostile")
    server = serve(tls_handler(cert, key))
    ca = pki.root_pem if trusted == "root" else pki.other_root_pem
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    argv = [
        "--config",
        str(config),
        "verify",
        f"localhost:{server.port}",
        "--ca",
        str(ca),
        "--timeout",
        str(TIMEOUT),
    ]

    code = cli.main(argv)
    text = capsys.readouterr().out
    assert _control_characters(text) == set(), repr(text)
    results = [line for line in text.splitlines() if line.lstrip().startswith("Result:")]
    assert results == (["Result: OK"] if trusted == "root" else ["Result: FAILED"]), text
    assert code == (0 if trusted == "root" else 1)
    assert "CN=gw01\\x0a Result: OK\\x0d\\x1b[2K\\x1b[1A" in text  # shown, escaped
    assert "DNS:x\\x1b[2K.example.test" in text

    assert cli.main([*argv, "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    strings: list[str] = []

    def collect(value: object) -> None:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)

    collect(doc)
    assert all(not _control_characters(s) and "\n" not in s for s in strings), strings
    assert doc["chain"][0]["subject"].startswith("CN=gw01\\x0a Result: OK")
    assert "DNS:x\\x1b[2K.example.test" in doc["chain"][0]["san"]


def test_long_gateway_names_are_cut(pki: Pki, serve: Serve, tmp_path: Path) -> None:
    many = [f"n{i}.{'a' * 60}.example.test" for i in range(300)]
    leaf = pki.edge.issue_server("gw01", ["localhost", *many])
    cert, key = leaf.write(tmp_path / "many")
    server = serve(tls_handler(cert, key))
    report = check("localhost", server.port, pki.root_pem)
    assert report.ok, render_text(report)
    assert len(report.chain[0].san) <= 32
    assert all(len(line) <= 4000 for line in render_text(report).splitlines())
