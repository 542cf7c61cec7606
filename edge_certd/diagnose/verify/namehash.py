"""The hash OpenSSL files a CA under in a hashed directory (`<hash>.N`, the links that
update-ca-certificates and c_rehash make in /etc/ssl/certs). Pure.

X509_NAME_hash_ex(): the SHA-1 of the name's canonical encoding (x509_name_canon(): each
string converted to UTF-8, leading and trailing whitespace dropped, inner runs of it made one
space, ASCII lower-cased, re-encoded as a UTF8String; the RDN SETs one after the other,
without the outer SEQUENCE), its first four bytes read little-endian, written as "%08lx".

Only for names this module canonicalises exactly as OpenSSL does: one attribute per RDN, its
value an ASCII PrintableString, UTF8String or IA5String (every CA name we have met). Anything
else gives None, and the caller lets OpenSSL search the directory itself.
"""

from __future__ import annotations

import hashlib

from edge_certd.core import der

__all__ = ["openssl_name_hash"]

_UTF8 = 0x0C
_SIMPLE = frozenset((0x0C, 0x13, 0x16))  # UTF8String, PrintableString, IA5String
# No real name has more; past it OpenSSL searches the directory itself.
_MAX_RDNS = 64


def openssl_name_hash(name_der: bytes) -> str | None:
    """The hash OpenSSL looks `name_der` (a Name, as DER) up by, or None (see the module)."""
    rdns = der.name_rdns(name_der, _MAX_RDNS)
    if rdns is None:
        return None
    canonical = []
    for rdn in rdns:
        if len(rdn) != 1:
            return None
        ((oid, tag, value),) = rdn
        if tag not in _SIMPLE or not value.isascii():
            return None
        # i2d re-encodes the OID from its content, as _tlv does.
        attribute = _tlv(der.OID, oid) + _tlv(_UTF8, b" ".join(value.split()).lower())
        canonical.append(_tlv(der.SET, _tlv(der.SEQUENCE, attribute)))
    digest = hashlib.sha1(b"".join(canonical), usedforsecurity=False).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content
