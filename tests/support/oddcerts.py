"""Certificates the policy must refuse, made at test time.

Weak or odd algorithms come from the openssl command line, because newer cryptography
releases refuse to sign with some of them; the rest come from `cryptography` directly.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def openssl_root(
    work: Path,
    name: str,
    newkey: str,
    digest: str = "sha256",
    extra: tuple[str, ...] = ("-addext", "basicConstraints=critical,CA:TRUE"),
) -> bytes:
    """A self-signed certificate from `openssl req -x509`; returns its PEM."""
    work.mkdir(parents=True, exist_ok=True)
    out, key = work / f"{name}.pem", work / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            newkey,
            f"-{digest}",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(out),
            "-subj",
            f"/CN={name}",
            "-days",
            "30",
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def dsa_root(work: Path) -> bytes:
    params = work / "dsa.params"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "dsaparam", "-out", str(params), "2048"], check=True, capture_output=True)
    return openssl_root(work, "dsa-root", f"dsa:{params}")


def ec_root(work: Path, curve: str) -> bytes:
    return openssl_root(
        work,
        f"ec-{curve}",
        "ec",
        extra=("-pkeyopt", f"ec_paramgen_curve:{curve}", "-addext", "basicConstraints=critical,CA:TRUE"),
    )


def v1_root(work: Path) -> bytes:
    """A version 1 certificate: no extensions at all, so no basicConstraints.

    Built by hand rather than by `openssl x509 -req`: OpenSSL 3.2 and later (Debian 13) add
    key identifiers there by default, which makes the certificate version 3.
    """
    from support import derbuild as d

    work.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    v3 = self_signed("v1 root", key=key)
    # A v1 TBSCertificate has neither the [0] version (its default is v1) nor [3] extensions.
    fields = [f for f in d.tbs_fields(v3) if f[0] not in (0xA0, 0xA3)]
    der = d.resign(v3, key, d.seq(*fields))
    cert = x509.load_der_x509_certificate(der)
    assert cert.version is x509.Version.v1, cert.version
    out = work / "v1.pem"
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out.read_bytes()


def self_signed(
    name: str,
    *,
    ca: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: object = None,
) -> x509.Certificate:
    """A self-signed P-256 certificate with the given validity and CA flag."""
    now = dt.datetime.now(dt.UTC)
    private = key or ec.generate_private_key(ec.SECP256R1())
    # _validate=False lets a test build the over-long names an attacker could send.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the over-long name is the point of some tests
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name, _validate=False)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(private, hashes.SHA256())  # type: ignore[arg-type]


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def tampered(cert: x509.Certificate) -> bytes:
    """The certificate's DER with one signature byte flipped: the self-signature breaks."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    return bytes(der)


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)
