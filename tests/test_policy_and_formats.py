"""The pure core: every rejection reason and every input format, without touching a trust store."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from support.certs import CA
from support.oddcerts import dsa_root, ec_root, openssl_root, pem, self_signed, tampered, v1_root

from edge_certd.core.formats import FormatError, parse
from edge_certd.core.judgement import JudgeContext, JudgeRequest, Rules
from edge_certd.core.model import SourceKind, TrustedCA
from edge_certd.core.plan import OWNED_FILE, file_name
from edge_certd.core.verdict import DROP, KEYVAULT, judge_file

NOW = dt.datetime.now(dt.UTC)


def verdict_of(data: bytes, kind: str = DROP, rules: Rules | None = None, passwords=()):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    request = JudgeRequest(source="/drop/x.pem", data=data, kind=SourceKind(kind))
    return judge_file(request, JudgeContext(rules=rules or Rules(), now=now, passwords=tuple(passwords)))


def codes(data: bytes, **kwargs: object) -> list[str]:
    return [r.code for r in verdict_of(data, **kwargs).rejected]  # type: ignore[arg-type]


def test_root_pem_is_accepted_with_its_fingerprint() -> None:
    root = CA.root("Contoso Root CA")
    verdict = verdict_of(root.cert_pem)
    assert [ca.subject for ca in verdict.accepted] == ["CN=Contoso Root CA,O=edge-certd tests"]
    assert verdict.format == "pem" and not verdict.rejected


def test_leaf_is_rejected_as_not_a_ca() -> None:
    leaf = CA.root().issue_server("gw", ["gw.example"])
    assert codes(leaf.cert_pem) == ["not_ca"]


def test_v1_certificate_without_basic_constraints_is_not_a_ca(tmp_path: Path) -> None:
    verdict = verdict_of(v1_root(tmp_path))
    assert [r.code for r in verdict.rejected] == ["not_ca"]
    assert "version 1" in verdict.rejected[0].message


def test_intermediate_is_rejected_unless_allowed() -> None:
    inter = CA.root("R").intermediate("Edge Intermediate")
    assert codes(inter.cert_pem) == ["not_self_signed"]
    assert len(verdict_of(inter.cert_pem, rules=Rules(allow_intermediate=True)).accepted) == 1


def test_broken_self_signature_is_rejected() -> None:
    assert codes(tampered(self_signed("Tampered Root"))) == ["bad_signature"]


def test_expired_root_is_rejected_unless_allowed() -> None:
    old = pem(
        self_signed("Old", not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1))
    )
    assert codes(old) == ["expired"]
    assert len(verdict_of(old, rules=Rules(allow_expired=True)).accepted) == 1


def test_not_yet_valid_names_the_device_clock() -> None:
    future = pem(self_signed("Future", not_before=NOW + dt.timedelta(days=30)))
    rejection = verdict_of(future).rejected[0]
    assert rejection.code == "not_yet_valid"
    assert "clock" in rejection.message and str(NOW.year) in rejection.message


def test_rsa_1024_is_below_the_minimum(tmp_path: Path) -> None:
    data = openssl_root(tmp_path, "small", "rsa:1024")
    assert codes(data) == ["weak_key"]
    assert not codes(data, rules=Rules(min_rsa_bits=1024))


def test_dsa_and_unusual_curves_are_unsupported(tmp_path: Path) -> None:
    assert codes(dsa_root(tmp_path)) == ["unsupported_key"]
    assert codes(ec_root(tmp_path, "secp256k1")) == ["unsupported_key"]
    assert not codes(ec_root(tmp_path, "secp384r1"))


def test_sha1_and_md5_signatures_are_rejected(tmp_path: Path) -> None:
    sha1 = openssl_root(tmp_path, "sha1", "rsa:2048", "sha1")
    assert codes(sha1) == ["weak_signature"]
    assert not codes(sha1, rules=Rules(allow_sha1_signature=True))
    md5 = openssl_root(tmp_path, "md5", "rsa:2048", "md5")
    assert codes(md5, rules=Rules(allow_sha1_signature=True)) == ["weak_signature"]


def test_garbage_empty_and_truncated_files_are_unparseable() -> None:
    root = CA.root()
    for data in (b"hello world\n", b"", b"\x30\x82\xff\xff junk", root.cert_pem[:200]):
        assert codes(data) == ["unparseable"], data[:20]


def test_pem_with_bad_base64_and_headers_is_unparseable() -> None:
    root = CA.root()
    bad = root.cert_pem.replace(b"\n", b"\n!!", 1)
    assert codes(bad) == ["unparseable"]
    with_headers = root.cert_pem.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1)
    assert codes(with_headers) == ["unparseable"]


def test_certificate_with_trailing_junk_is_refused() -> None:
    assert codes(CA.root().der + b"JUNK") == ["unparseable"]


def test_private_key_in_drop_file_refuses_the_whole_file() -> None:
    root = CA.root()
    verdict = verdict_of(root.cert_pem + root.key_pem)
    assert [r.code for r in verdict.rejected] == ["private_key"] and not verdict.accepted
    assert b"PRIVATE" not in verdict.rejected[0].message.encode()


def test_private_key_in_keyvault_file_is_ignored() -> None:
    root = CA.root()
    verdict = verdict_of(root.cert_pem + root.key_pem, kind=KEYVAULT)
    assert len(verdict.accepted) == 1 and [i.what for i in verdict.ignored] == ["private key"]


def test_openssl_text_and_bag_attributes_around_pem_are_fine() -> None:
    root = CA.root("Texty Root")
    data = (
        b"Bag Attributes\n    friendlyName: x\nsubject=/CN=Texty Root\n"
        + root.cert_pem
        + b"Certificate:\n    Data:\n        Version: 3 (0x2)\n"
    )
    assert len(verdict_of(data).accepted) == 1


def test_der_pkcs7_and_pkcs12_are_recognised() -> None:
    root, other = CA.root("A Root"), CA.root("B Root")
    assert parse(root.der).format == "der"
    p7_pem = pkcs7.serialize_certificates([root.cert, other.cert], serialization.Encoding.PEM)
    p7_der = pkcs7.serialize_certificates([root.cert, other.cert], serialization.Encoding.DER)
    assert len(verdict_of(p7_pem).accepted) == 2 and parse(p7_pem).format == "pkcs7-pem"
    assert len(verdict_of(p7_der).accepted) == 2 and parse(p7_der).format == "pkcs7-der"
    p12 = pkcs12.serialize_key_and_certificates(None, None, None, [root.cert], serialization.NoEncryption())
    assert parse(p12).format == "pkcs12" and len(verdict_of(p12).accepted) == 1
    assert parse(base64.b64encode(p12)).format == "pkcs12-base64"


def test_pkcs12_password_comes_from_password_files_or_is_a_clear_rejection() -> None:
    root = CA.root("Locked Root")
    p12 = pkcs12.serialize_key_and_certificates(
        None, None, None, [root.cert], serialization.BestAvailableEncryption(b"s3cret")
    )
    # In the drop directory a PFX nobody can open may hold a key: refused as sealed (and
    # tightened); in a Key Vault export it is only a missing password.
    assert codes(p12) == ["pkcs12_sealed"] and verdict_of(p12).leaks_private_key
    assert codes(p12, kind=KEYVAULT) == ["pkcs12_password"]
    assert len(verdict_of(p12, passwords=[b"wrong", b"s3cret"]).accepted) == 1
    with pytest.raises(FormatError) as info:
        parse(p12, [b"nope"])
    assert "s3cret" not in info.value.message


def test_same_ca_twice_in_one_file_counts_once() -> None:
    root = CA.root()
    assert len(verdict_of(root.cert_pem + root.cert_pem).accepted) == 1


def test_hostile_subject_cannot_forge_log_lines() -> None:
    cert = self_signed("evil\nFAKE LOG LINE\x00" + "x" * 500)
    ca = verdict_of(pem(cert)).accepted[0]
    assert "\n" not in ca.subject and "\x00" not in ca.subject and len(ca.subject) <= 200


def test_installed_file_names_are_safe_and_owned() -> None:
    for name in ("Contoso Root CA", "../../etc/passwd", "-rf", "ünïcødé", ""):
        ca = TrustedCA(sha256="ab" * 32, subject=f"CN={name}", not_before=NOW, not_after=NOW, der=b"")
        assert OWNED_FILE.match(file_name(ca)), file_name(ca)
        assert "/" not in file_name(ca)
