"""Test-time certificate authorities, made with `cryptography` directly.

Works with cryptography 38 (Debian 12) and current PyPI releases. Keys are EC
P-256 by default because they generate in microseconds; pass key_type="rsa" when
a test needs RSA.

    root = CA.root("Test Root")
    edge = root.intermediate("Intermediate").intermediate("Edge CA")
    leaf = edge.issue_server("gateway", ["localhost", "127.0.0.1"])
    leaf.write(tmp_path / "server")   # server.pem (leaf + chain), server.key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = ["CA", "Issued", "utcnow", "pem_bundle"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key(key_type: KeyType, rsa_bits: int = 2048) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-certd tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class Issued:
    """A certificate with its key and the chain above it (issuer first, root last)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=())

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def chain_pem(self, include_root: bool = False) -> bytes:
        """This certificate followed by its issuers; the self-signed root only if asked."""
        certs = [self.cert, *self.chain]
        if not include_root and len(certs) > 1 and certs[-1].issuer == certs[-1].subject:
            certs = certs[:-1]
        return pem_bundle(certs)

    def write(self, stem: Path, include_root: bool = False) -> tuple[Path, Path]:
        """Write `<stem>.pem` (cert + chain) and `<stem>.key`; return both paths."""
        cert_path = stem.with_suffix(".pem")
        key_path = stem.with_suffix(".key")
        cert_path.write_bytes(self.chain_pem(include_root))
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def pem_bundle(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class CA(Issued):
    """A certificate authority that can issue intermediates and server certificates."""

    @classmethod
    def root(
        cls,
        common_name: str = "edge-certd Test Root",
        *,
        key_type: KeyType = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        path_length: int | None = None,
        subject: x509.Name | None = None,
    ) -> CA:
        """A self-signed root named `common_name`, or `subject` whole when given."""
        key = _new_key(key_type)
        start = not_before or utcnow() - dt.timedelta(days=1)
        end = not_after or utcnow() + dt.timedelta(days=3650)
        name = subject if subject is not None else _name(common_name)
        builder = _ca_builder(name, name, key, start, end, path_length)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        return cls(cert=builder.sign(key, hashes.SHA256()), key=key, chain=())

    def intermediate(
        self,
        common_name: str,
        *,
        key_type: KeyType = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        path_length: int | None = None,
    ) -> CA:
        key = _new_key(key_type)
        start = not_before or utcnow() - dt.timedelta(days=1)
        end = not_after or utcnow() + dt.timedelta(days=1825)
        builder = _ca_builder(_name(common_name), self.cert.subject, key, start, end, path_length)
        builder = builder.add_extension(self._aki(), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return CA(cert=cert, key=key, chain=(self.cert, *self.chain))

    def issue_server(
        self,
        common_name: str,
        sans: list[str],
        *,
        key_type: KeyType = "ec",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A TLS server certificate; an empty `sans` leaves out the SAN extension."""
        key = _new_key(key_type)
        start = not_before or utcnow() - dt.timedelta(days=1)
        end = not_after or utcnow() + dt.timedelta(days=365)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._aki(), critical=False)
        )
        if sans:
            builder = builder.add_extension(_san(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert=cert, key=key, chain=(self.cert, *self.chain))

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    start: dt.datetime,
    end: dt.datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
