"""Trust stores as bytes: the JKS writer and the readers of every kind a runtime reads
(PEM, JKS, PKCS#12). Pure: the Java target writes the file, `doctor` and `verify` read it
back through here, so the one format is known in one place.

JKS is the layout of OpenJDK's sun.security.provider.JavaKeyStore (engineStore/engineLoad):
a magic, a version, a count, then entries; only trustedCertEntry items (tag 2) are written
or read here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Literal

from edge_certd.core.pem import iter_pem_ders

StoreKind = Literal["pem", "jks", "pkcs12"]

_JKS_MAGIC = 0xFEEDFEED
_JKS_TRUSTED_CERT = 2

__all__ = ["StoreKind", "certificates", "jks_truststore"]


def jks_truststore(entries: Sequence[tuple[str, bytes]], password: str) -> bytes:
    """A JKS keystore holding only trustedCertEntry items (the format keytool reads)."""
    body = struct.pack(">III", _JKS_MAGIC, 2, len(entries))
    for alias, der in entries:
        name = alias.encode("utf-8")
        # A fixed timestamp keeps the output byte-identical for the same set.
        body += struct.pack(">IH", _JKS_TRUSTED_CERT, len(name)) + name + struct.pack(">Q", 0)
        body += struct.pack(">H", 5) + b"X.509" + struct.pack(">I", len(der)) + der
    # JKS integrity check: SHA-1 over the UTF-16BE password, a fixed salt and the body.
    check = hashlib.sha1(password.encode("utf-16-be") + b"Mighty Aphrodite" + body).digest()
    return body + check


def certificates(data: bytes, kind: StoreKind, password: str = "") -> list[bytes]:
    """The DER of every trusted certificate in a store of `kind`.

    PEM blocks that do not decode are skipped, and a truncated JKS gives what was read
    before the cut, as the runtimes' own readers would use no more.

    Raises:
        ValueError: a PKCS#12 store that `password` does not open.
    """
    if kind == "pem":
        return list(iter_pem_ders(data))
    if kind == "jks":
        return _jks_certificates(data)
    # Lazy: the daemon never loads cryptography (docs/ARCHITECTURE.md, test_daemon_footprint).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        loaded = pkcs12.load_pkcs12(data, password.encode())
    except (ValueError, TypeError):
        raise ValueError("cannot be read as PKCS#12 with this password") from None
    return [item.certificate.public_bytes(serialization.Encoding.DER) for item in loaded.additional_certs]


def _jks_certificates(data: bytes) -> list[bytes]:
    found: list[bytes] = []
    try:
        magic, _version, count = struct.unpack_from(">III", data, 0)
        if magic != _JKS_MAGIC:
            return []
        offset = 12
        for _ in range(count):
            tag, alias_len = struct.unpack_from(">IH", data, offset)
            offset += 6 + alias_len + 8  # alias, then the timestamp
            if tag != _JKS_TRUSTED_CERT:
                return found  # a key entry: not one of ours, stop reading
            (type_len,) = struct.unpack_from(">H", data, offset)
            offset += 2 + type_len
            (der_len,) = struct.unpack_from(">I", data, offset)
            offset += 4
            found.append(data[offset : offset + der_len])
            offset += der_len
    except struct.error:
        pass  # truncated: what was read so far is what it holds
    return found
