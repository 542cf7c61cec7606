"""A tiny DER encoder and editor for building certificates cryptography refuses to build.

Independent of edge_certd.core.der on purpose: a test should not prove the reader with
itself. Enough for: re-signing an edited TBSCertificate, and hand-made PKCS#7, PKCS#12
and OpenSSL trust-settings structures.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + length(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(items))


def integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x02, raw)


def octets(content: bytes) -> bytes:
    return tlv(0x04, content)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray()
    for number in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return tlv(0x06, bytes(out))


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def split(der: bytes) -> list[bytes]:
    """The complete encodings of the elements inside one constructed element."""
    content = _content(der)
    out, at = [], 0
    while at < len(content):
        _, start, end = _header(content, at)
        out.append(content[at:end])
        at = end
    return out


def _content(der: bytes) -> bytes:
    _, start, end = _header(der, 0)
    return der[start:end]


def _header(der: bytes, at: int) -> tuple[int, int, int]:
    tag, first = der[at], der[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    count = first & 0x7F
    size = int.from_bytes(der[at + 2 : at + 2 + count], "big")
    return tag, at + 2 + count, at + 2 + count + size


def resign(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, tbs: bytes) -> bytes:
    """A certificate with `tbs` as its TBSCertificate, signed (ECDSA-SHA256) by `key`."""
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: F401

    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = split(cert.public_bytes(serialization.Encoding.DER))[1]
    return seq(tbs, algorithm, tlv(0x03, b"\x00" + signature))


def tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """[version, serial, signature algorithm, issuer, validity, subject, spki, extensions]."""
    return split(split(cert.public_bytes(serialization.Encoding.DER))[0])
