"""Small PEM helpers shared by the targets and verify."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def der_to_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def iter_pem_ders(data: bytes) -> Iterator[bytes]:
    """The DER of each CERTIFICATE block; blocks that do not decode are skipped."""
    for match in _CERT_BLOCK.finditer(data):
        try:
            yield base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except ValueError:
            continue


def pem_fingerprints(data: bytes) -> set[str]:
    """SHA-256 fingerprints of every certificate in a PEM bundle."""
    return {hashlib.sha256(der).hexdigest() for der in iter_pem_ders(data)}
