"""`verify` checks each runtime's trust store on its own, on a device-like temp tree.

The tree is the one conftest.make_tree lays out (the real update-ca-certificates, run on
the tree only); the gateway is a real TLS server on loopback presenting server + edge CA.
Each store is a line: the system store (the tree's bundle and its hashed directory),
edge-roots.pem alone, ca-bundle.pem and, when enabled, the Java truststore.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certs import CA
from support.loopback import LoopbackServer, tls_handler
from support.tree import Tree, make_tree, require_tool

from edge_certd import cli
from edge_certd.core.pem import iter_pem_ders
from edge_certd.diagnose.verify import anchors
from edge_certd.diagnose.verify.check import verify_gateway
from edge_certd.diagnose.verify.model import TrustStore, VerifyRequest
from edge_certd.diagnose.verify.render import render_text
from edge_certd.targets.java import jks_truststore

TIMEOUT = "3"
GENERATED = ("ca-certificates.crt", "edge-roots.pem", "ca-bundle.pem", "java-truststore")


@dataclass
class Gateway:
    root: CA
    port: int
    dir: Path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    root = CA.root("Stores Gateway Root")
    leaf = root.intermediate("Edge CA stores-gw").issue_server("stores-gw", ["localhost", "127.0.0.1"])
    cert, key = leaf.write(tmp_path / "gateway")
    server = LoopbackServer(tls_handler(cert, key))
    try:
        yield Gateway(root, server.port, tmp_path)
    finally:
        server.close()


def device(tmp_path: Path, java: str = "off") -> Tree:
    require_tool("update-ca-certificates")
    return make_tree(tmp_path / "device", java=java)


def drop_root(tree: Tree, root: CA) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    tree.drop.chmod(0o755)
    (tree.drop / "gateway-root.pem").write_bytes(root.cert_pem)
    sync(tree)


def sync(tree: Tree) -> None:
    done = tree.cli("sync")
    assert done.returncode == 0, done.stdout + done.stderr


def install_by_hand(tree: Tree, root: CA) -> None:
    """What a technician did before edge-certd: the root in the system store, not managed."""
    (tree.root / "usr/local/share/ca-certificates/handmade-root.crt").write_bytes(root.cert_pem)
    subprocess.run([str(tree.root / "update-wrapper")], check=True, capture_output=True)


def verify(tree: Tree, gw: Gateway, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    argv = ["--config", str(tree.config_path), "verify", f"localhost:{gw.port}", "--timeout", TIMEOUT]
    code = cli.main([*argv, *extra])
    text = capsys.readouterr().out
    assert cli.main([*argv, *extra, "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is (code == 0)
    return code, text, doc


def lines(text: str) -> dict[str, tuple[str, str]]:
    """Store title -> (status, summary), from the text report."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = re.match(
            r"  \[(\w+)\] (system store|edge-roots\.pem|ca-bundle\.pem|Java truststore|--ca file): (.*)", line
        )
        if match:
            assert match[2] not in found, f"two lines for {match[2]}:\n{text}"
            found[match[2]] = (match[1], match[3])
    return found


def one_verdict(text: str) -> tuple[str, str]:
    verdicts = [line for line in text.splitlines() if line.startswith("Verification")]
    results = [line for line in text.splitlines() if line.startswith("Result:")]
    assert len(verdicts) == 1 and len(results) == 1, text
    return verdicts[0], results[0]


def assert_fix_edits_no_generated_file(text: str) -> None:
    fixes = [line for line in text.splitlines() if line.startswith("Fix:")]
    assert len(fixes) <= 1, text
    for fix in fixes:
        assert not any(name in fix for name in GENERATED), fix


# --------------------------------------------------------------------------- (d) all good


def test_every_runtime_store_trusts_the_gateway_and_verify_exits_0(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path, java="jks")  # jks: no keytool needed, on every cryptography
    drop_root(tree, gateway.root)
    code, text, doc = verify(tree, gateway, capsys)
    assert code == 0, text
    found = lines(text)
    assert list(found) == ["system store", "edge-roots.pem", "ca-bundle.pem", "Java truststore"], text
    for status, summary in found.values():
        assert status == "pass"
        assert summary == "trusts the chain, anchored at CN=Stores Gateway Root,O=edge-certd tests"
    assert one_verdict(text) == ("Verification: OK", "Result: OK")
    assert [(s["name"], s["trusted"], s["error"]) for s in doc["stores"]] == [
        ("system", True, None),
        ("edge-roots", True, None),
        ("ca-bundle", True, None),
        ("java", True, None),
    ]
    assert doc["stores"][0]["directory"] == str(tree.etc_certs)
    assert doc["stores"][1]["certificates"] == 1  # edge-roots.pem: ours alone
    assert doc["verification"] == "Verification: OK"


# --------------------------------------------------------------------------- (a) SDK line


def test_empty_edge_roots_fails_the_sdk_line_although_the_system_store_trusts_the_root(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path)
    install_by_hand(tree, gateway.root)
    sync(tree)  # edge-certd manages nothing: edge-roots.pem is written empty
    assert tree.edge_roots.read_bytes() == b""
    code, text, doc = verify(tree, gateway, capsys)
    assert code == 1, text
    found = lines(text)
    assert found["system store"][0] == "pass"
    assert found["ca-bundle.pem"][0] == "pass"
    assert found["edge-roots.pem"] == ("fail", "holds no certificate")
    assert one_verdict(text) == (
        "Verification error: holds no certificate (edge-roots.pem)",
        "Result: FAILED",
    )
    assert doc["diagnosis"]["cause"] == "no-trust"
    assert "Azure IoT SDKs" in doc["diagnosis"]["message"]
    assert f"into the drop directory {tree.drop}" in doc["diagnosis"]["fix"]
    assert_fix_edits_no_generated_file(text)


def test_edge_roots_without_the_gateway_root_fails_even_when_the_system_store_has_it(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path)
    install_by_hand(tree, gateway.root)
    drop_root(tree, CA.root("Some Other Managed Root"))  # edge-roots.pem holds only that one
    code, text, doc = verify(tree, gateway, capsys)
    assert code == 1, text
    found = lines(text)
    assert found["system store"][0] == "pass" and found["ca-bundle.pem"][0] == "pass"
    assert found["edge-roots.pem"] == (
        "fail",
        "does not trust the chain: unable to get local issuer certificate",
    )
    diag = doc["diagnosis"]
    assert diag["cause"] == "untrusted-root"
    assert "only system store, ca-bundle.pem trust it" in diag["message"]
    # Not managed by edge-certd yet: the fix is the drop directory, not a sync.
    assert diag["fix"].startswith("copy the root CA certificate CN=Stores Gateway Root")
    assert_fix_edits_no_generated_file(text)


# --------------------------------------------------------------------------- (b) hostname


def test_hostname_mismatch_gives_one_consistent_verdict(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path)
    drop_root(tree, gateway.root)
    code, text, doc = verify(tree, gateway, capsys, "--servername", "mygateway.contoso.com")
    assert code == 1, text
    assert "Verification: OK" not in text
    assert {status for status, _ in lines(text).values()} == {"pass"}  # trust is fine
    assert "[fail] hostname check: mygateway.contoso.com is not in the SAN" in text
    verdict, result = one_verdict(text)
    assert verdict.startswith(
        "Verification error: hostname mismatch (mygateway.contoso.com is not in the SAN"
    )
    assert result == "Result: FAILED"
    assert text.count("Diagnosis:") == 1 and doc["diagnosis"]["cause"] == "hostname-mismatch"
    assert doc["verification"] == verdict
    assert_fix_edits_no_generated_file(text)


# --------------------------------------------------------------------------- (e) Java


def test_java_truststore_without_the_root_fails_its_line(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path, java="jks")
    drop_root(tree, gateway.root)
    # A truststore that fell behind: the system's roots, not the gateway's.
    system = [(f"system-{i}", der) for i, der in enumerate(iter_pem_ders(tree.system_bundle.read_bytes()))]
    stale = [(alias, der) for alias, der in system if der not in set(iter_pem_ders(gateway.root.cert_pem))]
    (tree.bundles / "java-truststore.jks").write_bytes(jks_truststore(stale, "changeit"))
    code, text, doc = verify(tree, gateway, capsys)
    assert code == 1, text
    found = lines(text)
    assert found["Java truststore"] == (
        "fail",
        "does not trust the chain: unable to get local issuer certificate",
    )
    assert {found[name][0] for name in ("system store", "edge-roots.pem", "ca-bundle.pem")} == {"pass"}
    assert one_verdict(text) == (
        "Verification error: unable to get local issuer certificate (Java truststore)",
        "Result: FAILED",
    )
    # edge-certd already manages the root: the truststore is behind, and a sync rebuilds it.
    assert "edge-certd already manages this root" in doc["diagnosis"]["fix"]
    assert_fix_edits_no_generated_file(text)


def _pkcs12_truststore(path: Path, root: CA, password: bytes) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    cert = x509.load_pem_x509_certificate(root.cert_pem)
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            None, None, None, [cert], serialization.BestAvailableEncryption(password)
        )
    )


def test_pkcs12_truststore_is_read_with_the_configured_password(tmp_path: Path, gateway: Gateway) -> None:
    store_path = tmp_path / "java-truststore.p12"
    _pkcs12_truststore(store_path, gateway.root, b"s3cret")

    def run(password: str) -> tuple[str, str, bool]:
        store = TrustStore(
            key="java",
            title="Java truststore",
            used_by="Java",
            path=str(store_path),
            kind="pkcs12",
            password=password,
        )
        report = verify_gateway(
            VerifyRequest(host="localhost", port=gateway.port, stores=(store,), timeout=30)
        )
        (step,) = report.store_steps
        assert "s3cret" not in render_text(report)
        return step.status, step.summary, report.ok

    assert run("s3cret") == (
        "pass",
        "trusts the chain, anchored at CN=Stores Gateway Root,O=edge-certd tests",
        True,
    )
    status, summary, ok = run("wrong")
    assert (status, ok) == ("fail", False)
    assert "bundles.java_password" in summary


# --------------------------------------------------------------------------- (c) fixes


def test_no_fix_ever_says_to_edit_a_generated_file(
    tmp_path: Path, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = device(tmp_path)
    # Before any sync: no bundles at all, and the root nowhere.
    code, text, doc = verify(tree, gateway, capsys)
    assert code == 1 and [s["error"] for s in doc["stores"][1:]] == ["not found", "not found"]
    assert_fix_edits_no_generated_file(text)
    sync(tree)
    # The root nowhere, bundles written.
    code, text, _ = verify(tree, gateway, capsys)
    assert code == 1
    assert_fix_edits_no_generated_file(text)
    # --ca at the system bundle, which update-ca-certificates regenerates.
    code, text, doc = verify(tree, gateway, capsys, "--ca", str(tree.system_bundle))
    assert code == 1
    assert list(lines(text)) == ["--ca file"]  # trust only this file: one line
    assert doc["diagnosis"]["fix"].startswith("pass --ca a PEM file that holds the root CA")
    assert_fix_edits_no_generated_file(text)
    # --ca at edge-roots.pem, empty.
    code, text, _ = verify(tree, gateway, capsys, "--ca", str(tree.edge_roots))
    assert code == 1
    assert_fix_edits_no_generated_file(text)


# --------------------------------------------------------------------------- isolation


def test_a_store_is_checked_alone_without_this_machines_own_roots(tmp_path: Path) -> None:
    # openssl verify loads OpenSSL's default directory unless told not to; then a chain to
    # any of this machine's roots would pass the edge-roots.pem line. Read-only: a Mozilla
    # root from /usr/share/ca-certificates stands in for such a chain.
    mozilla = sorted(Path("/usr/share/ca-certificates/mozilla").glob("*.crt"))
    if not mozilla:
        pytest.skip("no Mozilla roots on this machine")
    public_root = next(iter_pem_ders(mozilla[0].read_bytes()))
    openssl = anchors.find_openssl()
    assert openssl is not None
    ours = tmp_path / "edge-roots.pem"
    ours.write_bytes(CA.root("Only This Root").cert_pem)
    alone = TrustStore(key="edge-roots", title="edge-roots.pem", used_by="the SDKs", path=str(ours))
    # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT (18): not trusted here. Had the machine's roots
    # leaked in, the chain would be trusted and only its purpose refused (26), as below.
    alone_result = anchors.check_store(alone, [public_root], openssl)
    assert (alone_result.verified, alone_result.error_code) == (False, 18), alone_result
    holding = tmp_path / "public.pem"
    holding.write_bytes(mozilla[0].read_bytes())
    with_it = TrustStore(key="system", title="system store", used_by="everyone", path=str(holding))
    trusted_result = anchors.check_store(with_it, [public_root], openssl)
    assert trusted_result.error_code == 26, trusted_result  # unsuitable purpose: a root is no server
