"""The probe hands `openssl verify` only the anchors it could use (diagnose/verify/pick.py),
and the stores' checks run side by side. Each case is checked against the real openssl, and
against the verdict OpenSSL gives when it reads the whole file (the way before): the same
verdict, the same words, the same anchor.
"""

from __future__ import annotations

import base64
import random
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from support.certs import CA, pem_bundle

from edge_certd.diagnose.verify import anchors, pick, runner
from edge_certd.diagnose.verify.model import StoreCheck, TrustStore

MANY = 60


@pytest.fixture(scope="module")
def others() -> bytes:
    """Many roots that have nothing to do with the gateway."""
    return pem_bundle([CA.root(f"Unrelated Root {i:03d}").cert for i in range(MANY)])


def openssl() -> str:
    found = anchors.find_openssl()
    assert found is not None
    return found


def fake_openssl(tmp_path: Path, body: str) -> Path:
    """An `openssl` that runs the shell `body` instead."""
    script = tmp_path / "openssl"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def store(path: Path) -> TrustStore:
    return TrustStore(key="edge-roots", title=path.name, used_by="the SDKs", path=str(path))


def as_whole_file(pem: bytes) -> bytes:
    """The same certificates with base64 lines of 76: still read by OpenSSL, but not plain,
    so the probe hands OpenSSL the whole file, as it always did."""
    blocks = pem.split(b"-----END CERTIFICATE-----\n")
    first = blocks[0].split(b"\n")
    body = b"".join(first[1:])
    wide = "\n".join(textwrap.wrap(body.decode(), 76)).encode()
    return b"-----END CERTIFICATE-----\n".join([first[0] + b"\n" + wide + b"\n", *blocks[1:]])


def check_both_ways(tmp_path: Path, pem: bytes, chain_der: list[bytes]) -> StoreCheck:
    picked_path, whole_path = tmp_path / "picked.pem", tmp_path / "whole.pem"
    picked_path.write_bytes(pem)
    whole_path.write_bytes(as_whole_file(pem))
    assert pick.read_pem_store(pem).clean
    assert not pick.read_pem_store(as_whole_file(pem)).clean
    picked = anchors.check_store(store(picked_path), chain_der, openssl())
    whole = anchors.check_store(store(whole_path), chain_der, openssl())
    assert picked == whole
    return picked


def test_the_right_root_among_many_is_the_only_anchor_handed_over_and_verifies(
    tmp_path: Path, others: bytes
) -> None:
    root = CA.root("Gateway Root")
    server = root.intermediate("Edge CA").issue_server("gw", ["gw"])
    chain = [server.der, server.chain[0].public_bytes(serialization.Encoding.DER)]
    half = others.index(b"-----BEGIN", len(others) // 2)
    pem = others[:half] + root.cert_pem + others[half:]
    chosen = pick.needed(pick.read_pem_store(pem), chain)
    assert chosen is not None and [e.der for e in chosen] == [root.der]
    result = check_both_ways(tmp_path, pem, chain)
    assert result.verified and result.anchors == MANY + 1 and result.holds_issuer
    assert result.anchor == "CN=Gateway Root,O=edge-certd tests"
    assert result.anchor_sha256 == root.cert.fingerprint(hashes.SHA256()).hex()


def test_many_roots_without_the_right_one_fail_with_openssls_own_error(tmp_path: Path, others: bytes) -> None:
    root = CA.root("Gateway Root")
    server = root.intermediate("Edge CA").issue_server("gw", ["gw"])
    chain = [server.der, server.chain[0].public_bytes(serialization.Encoding.DER)]
    assert pick.needed(pick.read_pem_store(others), chain) == []
    result = check_both_ways(tmp_path, others, chain)
    assert not result.verified and not result.holds_issuer and result.anchor is None
    assert (result.error_code, result.error_text) == (20, "unable to get local issuer certificate")


def test_a_path_through_an_intermediate_only_the_store_holds_verifies(tmp_path: Path, others: bytes) -> None:
    root = CA.root("Gateway Root")
    edge_ca = root.intermediate("Edge CA")
    server = edge_ca.issue_server("gw", ["gw"])
    chain = [server.der]  # the gateway sends its leaf alone
    pem = others + edge_ca.cert_pem + root.cert_pem
    chosen = pick.needed(pick.read_pem_store(pem), chain)
    assert chosen is not None and [e.der for e in chosen] == [edge_ca.der, root.der]
    result = check_both_ways(tmp_path, pem, chain)
    assert result.verified and result.anchor == "CN=Edge CA,O=edge-certd tests"
    # Without the root above it, OpenSSL cannot finish the path: the same words as before.
    failed = check_both_ways(tmp_path, others + edge_ca.cert_pem, chain)
    assert (failed.verified, failed.error_code) == (False, 2)
    assert failed.error_text == "unable to get issuer certificate"


def test_a_root_whose_trust_settings_reject_tls_is_still_rejected(tmp_path: Path, others: bytes) -> None:
    root = CA.root("Rejected Root")
    server = root.issue_server("gw", ["gw"])
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    trusted = subprocess.run(
        [openssl(), "x509", "-in", str(tmp_path / "root.pem"), "-trustout", "-addreject", "serverAuth"],
        capture_output=True,
        check=True,
    ).stdout
    assert b"BEGIN TRUSTED CERTIFICATE" in trusted
    pem = others + trusted
    chosen = pick.needed(pick.read_pem_store(pem), [server.der])
    assert chosen is not None and [e.pem for e in chosen] == [trusted]  # verbatim, settings kept
    result = check_both_ways(tmp_path, pem, [server.der])
    assert (result.verified, result.error_code) == (False, 28), result  # X509_V_ERR_CERT_REJECTED
    # The same root as a plain CERTIFICATE verifies: the settings are what refused it.
    assert check_both_ways(tmp_path, others + root.cert_pem, [server.der]).verified


@pytest.mark.parametrize(
    "bad",
    [
        b"-----BEGIN CERTIFICATE-----\nMIIBfoo=\n-----END CERTIFICATE-----\n",  # DER cut short
        b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ],
)
def test_a_store_with_one_bad_block_is_still_one_openssl_cannot_load(
    tmp_path: Path, others: bytes, bad: bytes
) -> None:
    root = CA.root("Gateway Root")
    server = root.issue_server("gw", ["gw"])
    pem = others + root.cert_pem + bad
    assert not pick.read_pem_store(pem).clean
    assert pick.needed(pick.read_pem_store(pem), [server.der]) is None
    path = tmp_path / "bad.pem"
    path.write_bytes(pem)
    result = anchors.check_store(store(path), [server.der], openssl())
    assert result.problem == "OpenSSL could not load a certificate from it", result
    assert not result.verified and result.holds_issuer  # the root is there; the file is not loadable
    # Without the bad block the same store verifies.
    path.write_bytes(others + root.cert_pem)
    assert anchors.check_store(store(path), [server.der], openssl()).verified


def test_names_that_differ_only_in_case_or_spaces_are_handed_over_for_openssl_to_judge() -> None:
    # OpenSSL compares names case- and space-insensitively; the pick must never be stricter.
    upper = CA.root("Gateway   ROOT")
    lower = CA.root("gateway root")
    leaf = lower.issue_server("gw", ["gw"])
    read = pick.read_pem_store(upper.cert_pem + CA.root("Other").cert_pem)
    chosen = pick.needed(read, [leaf.der])
    assert chosen is not None and [e.der for e in chosen] == [upper.der]


def test_stores_are_checked_side_by_side_and_answer_in_order(tmp_path: Path, others: bytes) -> None:
    root = CA.root("Gateway Root")
    server = root.issue_server("gw", ["gw"])
    good, empty, missing = tmp_path / "good.pem", tmp_path / "empty.pem", tmp_path / "missing.pem"
    good.write_bytes(others + root.cert_pem)
    empty.write_bytes(b"")
    results = anchors.check_stores([store(good), store(empty), store(missing)], [server.der], openssl())
    assert [r.verified for r in results] == [True, False, False]
    assert [r.problem for r in results] == [None, "holds no certificate", "not found"]


def test_hostile_bytes_give_a_store_never_a_traceback() -> None:
    rng = random.Random(24)
    root = CA.root("Gateway Root")
    body = base64.b64encode(root.der)
    for _ in range(300):
        der = bytearray(root.der)
        for _ in range(rng.randint(1, 8)):
            der[rng.randrange(len(der))] = rng.randrange(256)
        pem = (
            b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
        )
        read = pick.read_pem_store(pem + bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
        pick.needed(read, [bytes(der), root.der])
        pick.name_key(bytes(der[: rng.randint(0, len(der))]))
    assert pick.read_pem_store(b"-----BEGIN CERTIFICATE-----\n" + body).entries == ()
    assert pick.needed(pick.read_pem_store(root.cert_pem), [b"\x30\x80" * 50]) is None


def test_a_wedged_openssl_is_killed_at_the_deadline_for_every_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wedged = fake_openssl(tmp_path, "exec sleep 60")
    monkeypatch.setattr(anchors, "_OPENSSL_TIMEOUT", 0.5)
    root = CA.root("Gateway Root")
    path = tmp_path / "roots.pem"
    path.write_bytes(root.cert_pem)
    start = time.monotonic()
    results = anchors.check_stores(
        [store(path), store(path)], [root.issue_server("gw", ["gw"]).der], str(wedged)
    )
    assert time.monotonic() - start < 10  # one deadline for all, not one each, and no 60 s sleep
    for result in results:
        assert result.problem is not None and result.problem.startswith(
            "cannot be checked: openssl verify did not run"
        )
        assert "timed out after 0.5 seconds" in result.problem and not result.verified
    # And the real openssl, beside it, answers.
    assert anchors.check_store(store(path), [root.issue_server("gw", ["gw"]).der], openssl()).verified


def test_stores_that_hand_openssl_the_same_anchors_share_one_run_and_one_verdict(
    tmp_path: Path, others: bytes
) -> None:
    log = tmp_path / "runs.log"
    counting = fake_openssl(tmp_path, f'echo run >> "{log}"\nexec "{openssl()}" "$@"')
    root, stranger = CA.root("Gateway Root"), CA.root("Stranger Root")
    server = root.issue_server("gw", ["gw"])
    big, alone, wrong = tmp_path / "big.pem", tmp_path / "alone.pem", tmp_path / "wrong.pem"
    big.write_bytes(others + root.cert_pem)
    alone.write_bytes(root.cert_pem)
    wrong.write_bytes(others + stranger.cert_pem)
    stores = [store(big), store(alone), store(wrong)]
    results = anchors.check_stores(stores, [server.der], str(counting))
    assert log.read_text().count("run") == 2  # big and alone need the same one anchor
    assert [r.verified for r in results] == [True, True, False]
    assert [r.anchors for r in results] == [MANY + 1, 1, MANY + 1]
    assert results[2].error_code == 20
    assert results == [anchors.check_store(s, [server.der], openssl()) for s in stores]


def test_no_openssl_outlives_a_check_that_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wedged = fake_openssl(tmp_path, "exec sleep 60")
    root = CA.root("Gateway Root")
    path = tmp_path / "roots.pem"
    path.write_bytes(root.cert_pem)
    started: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[call-overload]
            started.append(self)

    real_needed, calls = pick.needed, []

    def second_store_fails(*args: Any) -> list[pick.Entry] | None:
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("a bug half way")
        return real_needed(*args)

    monkeypatch.setattr(runner.subprocess, "Popen", Recorded)
    monkeypatch.setattr(pick, "needed", second_store_fails)
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        anchors.check_stores([store(path), store(path)], [root.issue_server("gw", ["gw"]).der], str(wedged))
    assert len(started) == 1 and started[0].returncode is not None  # killed and reaped
    assert time.monotonic() - start < 10  # not left to its 60 s sleep
