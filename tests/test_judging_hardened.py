"""Judging one file is total, bounded, as strict as OpenSSL, and finds every private key.

Each class of the issue has a "fails" case beside a "works" case. Certificates are made at
run time; what cryptography will not build is edited as DER (tests/support/derbuild.py) and signed
again, so the self-signature still verifies and the policy, not the signature, is tested.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID
from support import derbuild as d
from support.certs import CA
from support.tree import require_tool

from edge_certd.core import formats, pem, pfx
from edge_certd.core.judgement import JudgeContext, JudgeRequest, Rules
from edge_certd.core.model import FileVerdict, Reason, SourceKind
from edge_certd.core.verdict import DROP, KEYVAULT, judge_file

NOW = dt.datetime.now(dt.UTC)
PKCS8 = serialization.PrivateFormat.PKCS8
NO_PASSWORD = serialization.NoEncryption()


def judged(data: bytes, kind: str = DROP, passwords: tuple[bytes, ...] = ()) -> FileVerdict:
    request = JudgeRequest(source="/drop/x", data=data, kind=SourceKind(kind))
    return judge_file(request, JudgeContext(rules=Rules(), now=NOW, passwords=passwords))


def codes(data: bytes, kind: str = DROP) -> list[str]:
    return [r.code for r in judged(data, kind).rejected]


def accepted(data: bytes, kind: str = DROP) -> int:
    verdict = judged(data, kind)
    assert not verdict.rejected, verdict.rejected
    return len(verdict.accepted)


# -- 1. exceptions no longer escape --------------------------------------------------------


def test_pkcs7_that_is_not_signed_data_is_unparseable() -> None:
    data_only = d.seq(d.oid("1.2.840.113549.1.7.1"), d.explicit(0, d.octets(b"hello")))
    as_pem = b"-----BEGIN PKCS7-----\n" + base64.encodebytes(data_only) + b"-----END PKCS7-----\n"
    assert codes(data_only) == ["unparseable"]
    assert codes(as_pem) == ["unparseable"]
    root = CA.root("Signed Data Root")  # works: signed-data
    assert accepted(pkcs7.serialize_certificates([root.cert], serialization.Encoding.DER)) == 1


def test_json_nested_50000_deep_is_refused_as_too_costly() -> None:
    deep = b'{"cer": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert codes(deep) == ["too_costly"]
    strings = b'{"cer": "' + b"[" * 50_000 + b'", "x": 1}'  # brackets inside a string
    assert codes(strings) == ["unparseable"]
    root = CA.root("Key Vault Root")  # works
    doc = {
        "cer": base64.b64encode(root.der).decode(),
        "policy": {"a": [{"b": {"c": 1}}]},
        "x509ThumbprintHex": hashlib.sha1(root.der).hexdigest(),
    }
    assert accepted(json.dumps(doc).encode()) == 1


def _sm2_pfx(work: Path) -> bytes:
    require_tool("openssl")
    key, cert, out = work / "sm2.key", work / "sm2.pem", work / "sm2.p12"
    run = {"check": True, "capture_output": True}
    subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-out", str(key)], **run)  # type: ignore[call-overload]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(key),
            "-subj",
            "/CN=sm2",
            "-days",
            "30",
            "-out",
            str(cert),
        ],
        **run,
    )  # type: ignore[call-overload]
    subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-export",
            "-inkey",
            str(key),
            "-in",
            str(cert),
            "-out",
            str(out),
            "-passout",
            "pass:",
        ],
        **run,
    )  # type: ignore[call-overload]
    return out.read_bytes()


def test_pkcs12_with_an_sm2_key_is_refused_not_raised(tmp_path: Path) -> None:
    data = _sm2_pfx(tmp_path)
    assert codes(data) == ["private_key"]  # drop: the key bag is visible
    assert judged(data).leaks_private_key
    assert codes(data, KEYVAULT) == ["unparseable"]
    root = CA.root("P-256 In A PFX")  # works
    good = pkcs12.serialize_key_and_certificates(b"k", root.key, root.cert, None, NO_PASSWORD)
    assert accepted(good, KEYVAULT) == 1


def _root_with_tbs_edit(edit: int, new: bytes) -> tuple[CA, bytes]:
    root = CA.root("Edited Root")
    fields = d.tbs_fields(root.cert)
    fields[edit] = new
    return root, d.resign(root.cert, root.key, d.seq(*fields))


def test_root_with_notbefore_in_year_0000_is_unparseable() -> None:
    root = CA.root("Edited Root")
    not_after = d.split(d.tbs_fields(root.cert)[4])[1]
    _, year_zero = _root_with_tbs_edit(4, d.seq(d.tlv(0x18, b"00000101000000Z"), not_after))
    assert codes(year_zero) == ["unparseable"]
    assert "decoded" in judged(year_zero).rejected[0].message
    _, same = _root_with_tbs_edit(4, d.tbs_fields(root.cert)[4])  # works: re-signed, unedited
    assert accepted(same) == 1


def test_subject_cn_encoded_as_integer_is_unparseable() -> None:
    name = d.seq(d.set_of(d.seq(d.oid("2.5.4.3"), d.integer(12345))))
    root = CA.root("Edited Root")
    fields = d.tbs_fields(root.cert)
    fields[3] = fields[5] = name
    data = d.resign(root.cert, root.key, d.seq(*fields))
    assert codes(data) == ["unparseable"]
    assert codes(ssl.DER_cert_to_PEM_cert(data).encode()) == ["unparseable"]


@pytest.mark.parametrize(
    "error", [RuntimeError("key bytes 0xDEADBEEF"), RecursionError(), MemoryError(), KeyError("x")]
)
def test_an_internal_error_refuses_that_file_alone(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    good = CA.root("Unaffected Root").cert_pem
    real_parse = formats.parse

    def parse(data: bytes, passwords: object = ()) -> formats.Parsed:
        if data == b"BOOM":
            raise error
        return real_parse(data)

    monkeypatch.setattr("edge_certd.core.verdict.parse", parse)
    verdict = judged(b"BOOM")
    assert [r.code for r in verdict.rejected] == [Reason.JUDGE_FAILED]
    message = verdict.rejected[0].message
    assert type(error).__name__ in message and "DEADBEEF" not in message
    assert "not trusted" in message and not verdict.accepted
    assert accepted(good) == 1  # works: the next file is judged as ever


def test_a_rust_panic_is_caught_but_an_interrupt_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    class PanicException(BaseException):  # what pyo3 raises for a panic inside cryptography
        pass

    for error, escapes in ((PanicException("boom"), False), (KeyboardInterrupt(), True)):

        def parse(data: bytes, passwords: object = (), error: BaseException = error) -> None:
            raise error

        monkeypatch.setattr("edge_certd.core.verdict.parse", parse)
        if escapes:
            with pytest.raises(KeyboardInterrupt):
                judged(b"x")
        else:
            assert codes(b"x") == ["judge_failed"]


# -- 2. bounded cost -------------------------------------------------------------------------


class _CountingPattern:
    """Stands in for pem._MARKER and counts how often the data is walked."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.walks = 0

    def finditer(self, data: bytes, *args: int):  # type: ignore[no-untyped-def]
        self.walks += 1
        return self.real.finditer(data, *args)  # type: ignore[attr-defined]


def test_a_megabyte_of_begin_lines_is_one_linear_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    line = b"-----BEGIN A-----\n"
    bomb = line * (1_000_000 // len(line))
    counter = _CountingPattern(pem._MARKER)
    monkeypatch.setattr(pem, "_MARKER", counter)
    started = time.monotonic()
    verdict = judged(bomb)
    elapsed = time.monotonic() - started
    assert counter.walks == 1  # the markers are found in one walk over the data ...
    assert len(pem.scan(bomb)) == bomb.count(b"BEGIN")  # ... each BEGIN once, no re-scan
    assert [r.code for r in verdict.rejected] == ["unparseable"]
    assert len(verdict.rejected[0].message) < 3_000  # summarised, not 55,000 sentences
    assert elapsed < 10, elapsed  # generous: the quadratic scan took minutes
    root = CA.root("After The Junk")  # works: a real root behind 500 KB of them is found
    mixed = judged(line * 27_000 + root.cert_pem)
    assert len(mixed.accepted) == 1


def _pfx_with(mac_iterations: int, key_bag_iterations: int | None = None) -> bytes:
    """A hand-made PFX: an optional shrouded key bag, and a MAC with the given count."""
    data_oid = d.oid("1.2.840.113549.1.7.1")
    bags = []
    if key_bag_iterations is not None:
        algorithm = d.seq(
            d.oid("1.2.840.113549.1.12.1.3"), d.seq(d.octets(b"saltsalt"), d.integer(key_bag_iterations))
        )
        bags.append(
            d.seq(
                d.oid("1.2.840.113549.1.12.10.1.2"), d.explicit(0, d.seq(algorithm, d.octets(b"\x00" * 48)))
            )
        )
    safe = d.seq(data_oid, d.explicit(0, d.octets(d.seq(*bags))))
    auth_safe = d.seq(data_oid, d.explicit(0, d.octets(d.seq(safe))))
    sha1 = d.seq(d.oid("1.3.14.3.2.26"), b"\x05\x00")
    mac = d.seq(d.seq(sha1, d.octets(b"\x00" * 20)), d.octets(b"macsalt!"), d.integer(mac_iterations))
    return d.seq(d.integer(3), auth_safe, mac)


def test_a_pkcs12_asking_for_2_31_iterations_is_refused_without_the_kdf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    real = formats.pkcs12.load_key_and_certificates

    def spy(data: bytes, password: bytes | None, *rest: object) -> object:
        calls.append(password)
        return real(data, password)

    monkeypatch.setattr(formats.pkcs12, "load_key_and_certificates", spy)
    bomb = _pfx_with(2**31 - 1)
    keyvault = judged(bomb, KEYVAULT, (b"a", b"b"))
    assert [r.code for r in keyvault.rejected] == ["too_costly"]
    assert "2147483647" in keyvault.rejected[0].message
    assert "1,000,000" in keyvault.rejected[0].message
    drop = judged(bomb)
    assert [r.code for r in drop.rejected] == ["pkcs12_sealed"] and drop.leaks_private_key
    key_bag_bomb = _pfx_with(2048, key_bag_iterations=2**31 - 1)
    assert codes(key_bag_bomb, KEYVAULT) == ["too_costly"]
    assert codes(key_bag_bomb) == ["private_key"]  # and the key bag itself shows
    assert calls == []  # cryptography (and its KDF) never ran
    root = CA.root("Normal PFX Root")  # works: ordinary counts are opened
    good = pkcs12.serialize_key_and_certificates(
        None, None, None, [root.cert], serialization.BestAvailableEncryption(b"pw")
    )
    assert pfx.inspect(good).refusal is None
    assert len(judged(good, KEYVAULT, (b"pw",)).accepted) == 1 and calls


def test_iteration_counts_at_the_ceiling_are_allowed() -> None:
    assert pfx.inspect(_pfx_with(pfx.MAX_ITERATIONS)).refusal is None
    assert pfx.inspect(_pfx_with(pfx.MAX_ITERATIONS + 1)).too_costly


# -- 6. the policy is OpenSSL's -------------------------------------------------------------


def _root(name: str, extensions: list[tuple[x509.ExtensionType, bool]]) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return CA(cert=builder.sign(key, hashes.SHA256()), key=key)


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def openssl_verifies(work: Path, anchor: bytes, root: CA) -> bool:
    """Whether `openssl verify` accepts a TLS server certificate issued by `root`, with
    `anchor` (root's certificate, as this file gives it) as the only trusted CA."""
    require_tool("openssl")
    work.mkdir(parents=True, exist_ok=True)
    (work / "anchor.pem").write_bytes(anchor)
    (work / "leaf.pem").write_bytes(root.issue_server("gw.example", ["gw.example"]).cert_pem)
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            str(work / "anchor.pem"),
            str(work / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def test_a_critical_extension_openssl_cannot_handle_is_refused_like_openssl(tmp_path: Path) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    bad = _root("Critical Odd Root", [(odd, True)])
    assert codes(bad.cert_pem) == ["critical_extension"]
    assert not openssl_verifies(tmp_path / "bad", bad.cert_pem, bad)
    good = _root("Non-critical Odd Root", [(odd, False), (_usage(True), True)])
    assert accepted(good.cert_pem) == 1
    assert openssl_verifies(tmp_path / "good", good.cert_pem, good)


def test_key_usage_without_key_cert_sign_is_refused_like_openssl(tmp_path: Path) -> None:
    bad = _root("No CertSign Root", [(_usage(False), True)])
    assert codes(bad.cert_pem) == ["no_cert_sign"]
    assert not openssl_verifies(tmp_path / "bad", bad.cert_pem, bad)
    good = _root("CertSign Root", [(_usage(True), True)])
    assert accepted(good.cert_pem) == 1
    assert openssl_verifies(tmp_path / "good", good.cert_pem, good)
    bare = _root("No KeyUsage Root", [])  # works: no keyUsage at all is no restriction
    assert accepted(bare.cert_pem) == 1
    assert openssl_verifies(tmp_path / "bare", bare.cert_pem, bare)


def _trusted(work: Path, root: CA, *settings: str) -> bytes:
    require_tool("openssl")
    work.mkdir(parents=True, exist_ok=True)
    (work / "root.pem").write_bytes(root.cert_pem)
    subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(work / "root.pem"),
            "-trustout",
            *settings,
            "-out",
            str(work / "trusted.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return (work / "trusted.pem").read_bytes()


@pytest.mark.parametrize(
    "settings",
    [
        ("-addreject", "serverAuth"),
        ("-addtrust", "clientAuth"),
        ("-addtrust", "serverAuth", "-addreject", "emailProtection"),
    ],
)
def test_a_trusted_certificate_with_restrictive_settings_is_refused_like_openssl(
    tmp_path: Path, settings: tuple[str, ...]
) -> None:
    root = CA.root("Trust Settings Root")
    data = _trusted(tmp_path, root, *settings)
    assert b"BEGIN TRUSTED CERTIFICATE" in data
    verdict = judged(data)
    assert [r.code for r in verdict.rejected] == ["trust_settings"] and not verdict.accepted
    assert verdict.rejected[0].sha256 == hashlib.sha256(root.der).hexdigest()
    if "emailProtection" not in settings:  # OpenSSL cares only about the TLS purposes
        assert not openssl_verifies(tmp_path / "v", data, root)


@pytest.mark.parametrize("settings", [(), ("-addtrust", "serverAuth"), ("-addtrust", "anyExtendedKeyUsage")])
def test_a_plain_or_server_trusted_certificate_is_accepted_like_openssl(
    tmp_path: Path, settings: tuple[str, ...]
) -> None:
    root = CA.root("Trusted For Servers")
    data = _trusted(tmp_path, root, *settings)
    assert accepted(data) == 1
    assert openssl_verifies(tmp_path / "v", data, root)


# -- 7. private keys that slipped through ------------------------------------------------------


def _key_body(key: ec.EllipticCurvePrivateKey) -> bytes:
    return b"".join(
        key.private_bytes(serialization.Encoding.PEM, PKCS8, NO_PASSWORD).splitlines(keepends=True)[1:-1]
    )


@pytest.mark.parametrize("shape", ["no-end", "mismatched", "end-only", "openssh", "lowercase"])
def test_a_key_block_in_any_shape_refuses_the_file(shape: str) -> None:
    root = CA.root("Key Shapes Root")
    body = _key_body(root.key)  # type: ignore[arg-type]
    tail = {
        "no-end": b"-----BEGIN PRIVATE KEY-----\n" + body,
        "mismatched": b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END RSA PRIVATE KEY-----\n",
        "end-only": b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END PRIVATE KEY-----\n",
        "openssh": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n",
        "lowercase": b"---- begin ssh2 encrypted private key ----\n" + body,
    }[shape]
    verdict = judged(root.cert_pem + tail)
    assert [r.code for r in verdict.rejected] == ["private_key"] and not verdict.accepted
    assert verdict.leaks_private_key
    works = judged(root.cert_pem + b"-----BEGIN NOTE-----\n")  # works: an odd block, no key
    assert len(works.accepted) == 1 and not works.leaks_private_key


def _der_keys() -> dict[str, bytes]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    trad = serialization.PrivateFormat.TraditionalOpenSSL
    der = serialization.Encoding.DER
    return {
        "pkcs8": ec_key.private_bytes(der, PKCS8, NO_PASSWORD),
        "sec1": ec_key.private_bytes(der, trad, NO_PASSWORD),
        "pkcs1": rsa_key.private_bytes(der, trad, NO_PASSWORD),
        "encrypted": ec_key.private_bytes(der, PKCS8, serialization.BestAvailableEncryption(b"p")),
    }


DER_KEYS = _der_keys()


@pytest.mark.parametrize("name", sorted(DER_KEYS))
def test_a_der_key_appended_to_a_ca_refuses_the_file(name: str) -> None:
    root = CA.root("Appended Key Root")
    for data in (
        root.cert_pem + DER_KEYS[name],
        root.cert_pem + b"\n" + DER_KEYS[name],
        root.der + DER_KEYS[name],
    ):
        verdict = judged(data)
        assert [r.code for r in verdict.rejected] == ["private_key"], (name, verdict.rejected)
        assert verdict.leaks_private_key
    assert accepted(root.cert_pem + b"\x00\x01\x02 binary junk \x30\x03\x02\x01\x00") == 1


def test_a_pfx_nobody_can_open_is_refused_as_possibly_holding_a_key() -> None:
    root = CA.root("Sealed Root")
    sealed = pkcs12.serialize_key_and_certificates(
        None, None, None, [root.cert], serialization.BestAvailableEncryption(b"unknown")
    )
    verdict = judged(sealed)
    assert [r.code for r in verdict.rejected] == ["pkcs12_sealed"] and verdict.leaks_private_key
    assert "pfx_password_files" in verdict.rejected[0].message
    assert len(judged(sealed, DROP, (b"unknown",)).accepted) == 1  # works: with its password


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/octet-stream"])
def test_a_secret_of_any_content_type_holding_a_key_is_refused(content_type: str) -> None:
    root = CA.root("Secret Root")
    key_pem = root.key_pem.decode()
    for value in (key_pem, root.cert_pem.decode() + key_pem, base64.b64encode(DER_KEYS["pkcs8"]).decode()):
        doc = json.dumps({"contentType": content_type, "value": value}).encode()
        verdict = judged(doc)
        assert [r.code for r in verdict.rejected] == ["private_key"], (content_type, value[:30])
        assert verdict.leaks_private_key
    no_key = json.dumps({"contentType": content_type, "value": "hello"}).encode()
    assert codes(no_key) == ["unparseable"]  # works: no key, just an unusable secret


def test_a_huge_thumbprint_is_escaped_and_cut() -> None:
    root = CA.root("Thumbprint Root")
    claimed = "\n\x1b[31mFAKE " + "A" * 900_000
    doc = json.dumps({"cer": base64.b64encode(root.der).decode(), "x509ThumbprintHex": claimed})
    verdict = judged(doc.encode())
    message = verdict.rejected[0].message
    assert verdict.rejected[0].code == "thumbprint_mismatch"
    assert len(message) < 400 and message.isprintable()
    right = json.dumps(
        {
            "cer": base64.b64encode(root.der).decode(),
            "x509ThumbprintHex": hashlib.sha1(root.der).hexdigest().upper(),
        }
    )
    assert accepted(right.encode()) == 1


# -- the man page names every reason --------------------------------------------------------


def test_the_man_page_lists_every_reason_code() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "edge-certd.8").read_text()
    missing = [r.value for r in Reason if f".B {r.value}" not in page.replace("\\_", "_")]
    assert not missing, f"docs/edge-certd.8 does not list {missing}"
