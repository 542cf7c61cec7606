"""A store with a hashed directory (the system store: its bundle and /etc/ssl/certs) is
checked without -CApath when the directory holds nothing for the chain that OpenSSL is not
handed anyway (diagnose/verify/anchors.py), so it can share one `openssl verify` with
edge-roots.pem. The name hash is OpenSSL's own (namehash.py), compared here with
`openssl x509 -subject_hash`; every verdict is compared with the one OpenSSL gives when it
searches the directory itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from support.certs import CA

from edge_certd.diagnose.verify import anchors
from edge_certd.diagnose.verify.model import TrustStore
from edge_certd.diagnose.verify.namehash import openssl_name_hash

CN, ORG, OU, EMAIL = (
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.EMAIL_ADDRESS,
)
UTF8, PRINTABLE, BMP = _ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.BMPString


def openssl() -> str:
    found = anchors.find_openssl()
    assert found is not None
    return found


def openssl_says(cert: x509.Certificate) -> str:
    pem = cert.public_bytes(serialization.Encoding.PEM)
    argv = [openssl(), "x509", "-noout", "-subject_hash"]
    return subprocess.run(argv, input=pem, capture_output=True, check=True).stdout.decode().strip()


def rdns(*attributes: tuple[x509.ObjectIdentifier, str, _ASN1Type]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value, kind) for oid, value, kind in attributes])


HASHED = {
    "printable": rdns((CN, "Gateway Root", PRINTABLE)),
    "case and spaces": rdns((ORG, "  Contoso\t IoT  ", UTF8), (CN, "Edge   ROOT ca", UTF8)),
    "e-mail": rdns((EMAIL, "PKI@Example.COM", _ASN1Type.IA5String), (CN, "x", UTF8)),
    "long": rdns(*((OU, f"Unit {i:02d} " + "z" * 50, UTF8) for i in range(6))),
    "a long value": rdns((ORG, "Long " * 40, UTF8), (CN, "Root", PRINTABLE)),
    "one space": rdns((CN, " ", UTF8)),
    "empty": x509.Name([]),
}
NOT_HASHED = {
    "BMPString": rdns((CN, "Gateway Root", BMP)),
    "not ASCII": rdns((CN, "Wurzel Ü", UTF8)),
    "two in one RDN": x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(ORG, "a"), x509.NameAttribute(CN, "b")])]
    ),
}


@pytest.mark.parametrize("name", HASHED.values(), ids=HASHED.keys())
def test_the_name_hash_is_openssls(name: x509.Name) -> None:
    cert = CA.root(subject=name).cert
    assert openssl_name_hash(cert.subject.public_bytes()) == openssl_says(cert)


@pytest.mark.parametrize("name", NOT_HASHED.values(), ids=NOT_HASHED.keys())
def test_names_not_canonicalised_here_are_left_to_openssl(name: x509.Name) -> None:
    assert openssl_name_hash(name.public_bytes()) is None


def test_bytes_that_are_no_name_are_not_hashed() -> None:
    for junk in (b"", b"\x30", b"\x30\x03\x31\x01\x00", b"\x04\x00", b"\x30\x80\x00\x00"):
        assert openssl_name_hash(junk) is None


def hashed_directory(path: Path, *certs: x509.Certificate) -> Path:
    """A directory like /etc/ssl/certs: the files and their hash links (`openssl rehash`)."""
    path.mkdir()
    for i, cert in enumerate(certs):
        (path / f"ca-{i}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    subprocess.run([openssl(), "rehash", str(path)], check=True, capture_output=True)
    return path


def counting_openssl(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "runs.log"
    script = tmp_path / "openssl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{openssl()}" "$@"\n')
    script.chmod(0o755)
    return str(script), log


def whole(store: TrustStore, chain_der: list[bytes]) -> tuple[bool, int | None]:
    """OpenSSL's verdict with the whole bundle and -CApath: the way before any picking."""
    argv = [openssl(), "verify", "-purpose", "sslserver", "-no-CAstore", "-CAfile", store.path]
    argv += ["-CApath", str(store.directory)]
    pems = [x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in chain_der]
    leaf, untrusted = Path(store.path).parent / "leaf.pem", Path(store.path).parent / "untrusted.pem"
    leaf.write_bytes(pems[0])
    if len(pems) > 1:
        untrusted.write_bytes(b"".join(pems[1:]))
        argv += ["-untrusted", str(untrusted)]
    done = subprocess.run([*argv, str(leaf)], capture_output=True, text=True, check=False)
    code = next(
        (
            int(line.split()[1])
            for line in done.stdout.splitlines() + done.stderr.splitlines()
            if line.startswith("error ")
        ),
        None,
    )
    return done.returncode == 0, code


def test_a_directory_that_holds_only_the_bundles_copies_costs_no_run_of_its_own(tmp_path: Path) -> None:
    root = CA.root("Gateway Root")
    edge = root.intermediate("Edge CA")
    chain = [edge.issue_server("gw", ["gw"]).der, edge.der]
    others = [CA.root(f"Other {i}").cert for i in range(3)]
    certs_dir = hashed_directory(tmp_path / "certs", root.cert, *others)
    bundle, edge_roots = tmp_path / "ca-certificates.crt", tmp_path / "edge-roots.pem"
    bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [*others, root.cert]))
    edge_roots.write_bytes(root.cert_pem)
    system = TrustStore(
        key="system", title="system", used_by="OpenSSL", path=str(bundle), directory=str(certs_dir)
    )
    sdk = TrustStore(key="edge-roots", title="edge-roots", used_by="the SDKs", path=str(edge_roots))
    fake, log = counting_openssl(tmp_path)
    results = anchors.check_stores([system, sdk], chain, fake)
    runs = log.read_text().splitlines()
    assert len(runs) == 1 and "-no-CApath" in runs[0]
    assert [r.verified for r in results] == [True, True]
    assert whole(system, chain) == (True, None)


@pytest.mark.parametrize("case", ["only in the directory", "another copy in the directory", "junk link"])
def test_a_directory_that_could_add_anything_is_searched_by_openssl(tmp_path: Path, case: str) -> None:
    root = CA.root("Gateway Root")
    chain = [root.issue_server("gw", ["gw"]).der]
    bundle = tmp_path / "ca-certificates.crt"
    if case == "only in the directory":  # trusted through the directory alone
        certs_dir = hashed_directory(tmp_path / "certs", root.cert)
        bundle.write_bytes(CA.root("Other").cert_pem)
    elif case == "another copy in the directory":  # same name, another key: not the bundle's
        certs_dir = hashed_directory(tmp_path / "certs", CA.root("Gateway Root").cert)
        bundle.write_bytes(root.cert_pem)
    else:
        certs_dir = hashed_directory(tmp_path / "certs", root.cert)
        bundle.write_bytes(root.cert_pem)
        (link,) = certs_dir.glob("*.0")
        link.unlink()
        link.write_bytes(b"not a certificate\n")
    system = TrustStore(
        key="system", title="system", used_by="OpenSSL", path=str(bundle), directory=str(certs_dir)
    )
    fake, log = counting_openssl(tmp_path)
    (result,) = anchors.check_stores([system], chain, fake)
    (run,) = log.read_text().splitlines()
    assert f"-CApath {certs_dir}" in run
    verified, code = whole(system, chain)
    assert (result.verified, result.error_code) == (verified, code)
    if case == "only in the directory":
        assert result.verified
