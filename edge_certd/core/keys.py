"""Finding private keys where they should not be, without decoding them. Pure.

A key is recognised by its shape, never loaded: loading would put key material in memory
for nothing, cost an RSA consistency check an attacker can make slow, and fail for key
types cryptography cannot represent (SM2), which are keys all the same.
"""

from __future__ import annotations

import re

from edge_certd.core import der

# Any BEGIN line naming a private key, whatever its dashes or case: PKCS#8, PKCS#1, SEC1,
# OpenSSH, and SSH2's "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"; and PuTTY's .ppk.
_KEY_MARKER = re.compile(rb"BEGIN [^\r\n]{0,64}?PRIVATE KEY|PuTTY-User-Key-File-", re.IGNORECASE)

# Where a DER key may start: a SEQUENCE header, then either INTEGER 0 or 1 (PKCS#8,
# PKCS#1, SEC1, DSA) or a SEQUENCE (an EncryptedPrivateKeyInfo's algorithm). Every match
# needs a control byte, so text around PEM blocks never matches.
_DER_KEY_START = re.compile(
    rb"\x30(?:[\x00-\x7f]|\x81[\x80-\xff]|\x82[\x01-\xff].|\x83...)(?:\x02\x01[\x00\x01]|\x30)",
    re.DOTALL,
)
# Past this many key-shaped starts in one file's loose bytes, stop looking and assume a key:
# no certificate file has them, and looking costs time.
MAX_CANDIDATES = 10_000

_PBE_ARCS = (der.oid_bytes("1.2.840.113549.1.5"), der.oid_bytes("1.2.840.113549.1.12.1"))


def pem_key_markers(data: bytes) -> int:
    """How many BEGIN ... PRIVATE KEY markers (or PuTTY key headers) `data` holds."""
    return sum(1 for _ in _KEY_MARKER.finditer(data))


def der_keys_in(data: bytes, spans: list[tuple[int, int]]) -> int:
    """How many DER private keys start within the (start, end) spans of `data`."""
    found = candidates = 0
    for start, end in spans:
        for match in _DER_KEY_START.finditer(data, start, end):
            candidates += 1
            if candidates > MAX_CANDIDATES:
                return max(found, 1)
            if is_der_private_key(data, match.start(), len(data)):
                found += 1
    return found


def is_der_private_key(data: bytes, pos: int = 0, end: int | None = None) -> bool:
    """Whether a DER private key (PKCS#8, encrypted PKCS#8, PKCS#1, SEC1, DSA) starts at `pos`."""
    stop = len(data) if end is None else end
    try:
        tag, start, finish = der.header(data, pos, stop)
        if tag != der.SEQUENCE or finish is None:
            return False
        tags = _child_tags(data, start, finish, 10)
    except der.DerError:
        return False
    if len(tags) < 2:
        return False
    if tags[0][0] == der.SEQUENCE:  # EncryptedPrivateKeyInfo: {algorithm, encryptedData}
        return (
            len(tags) == 2
            and tags[1][0] == der.OCTET_STRING
            and _algorithm_is_pbe(data, tags[0][1], tags[0][2])
        )
    if tags[0][0] != der.INTEGER or data[tags[0][1] : tags[0][2]] not in (b"\x00", b"\x01"):
        return False
    second = [t for t, _, _ in tags[1:]]
    if second[:2] == [der.SEQUENCE, der.OCTET_STRING]:
        return True  # PKCS#8 PrivateKeyInfo / OneAsymmetricKey
    if second[0] == der.OCTET_STRING:
        return data[tags[0][1]] == 1  # SEC1 ECPrivateKey, version 1
    return len(second) >= 5 and all(t == der.INTEGER for t in second[:5])  # PKCS#1, DSA


def _child_tags(data: bytes, start: int, end: int, most: int) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    at = start
    while at < end and len(out) < most:
        tag, begin, finish = der.header(data, at, end)
        if finish is None:
            return out
        out.append((tag, begin, finish))
        at = finish
    return out


def _algorithm_is_pbe(data: bytes, start: int, end: int) -> bool:
    tag, begin, finish = der.header(data, start, end)
    if tag != der.OID or finish is None:
        return False
    return data[begin:finish].startswith(_PBE_ARCS)
