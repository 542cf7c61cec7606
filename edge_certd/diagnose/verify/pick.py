"""Which of a store's certificates `openssl verify` could use for one chain: found by name,
without building every certificate's subject with cryptography. Pure.

OpenSSL finds an issuer in its store by name (X509_STORE_CTX_get1_issuer: X509_NAME_cmp on
the canonical encoding x509_name_canon() makes: each string converted to UTF-8, ASCII
lower-cased, whitespace collapsed). A certificate whose subject is no name the chain asks
for, nor a name one of those asks for in turn, can change nothing in its verdict. `name_key`
is looser than that canonical form (all whitespace dropped, every letter lower-cased, the
attributes of all RDNs taken as one sorted list), so two names OpenSSL or cryptography call
equal always get the same key, and handing OpenSSL every certificate with a matching key
hands it every certificate it could pick.

A store is handed over in part only when it is plain: every PEM block a complete
CERTIFICATE or TRUSTED CERTIFICATE at the start of a line, in base64 lines of at most 64
characters, that cryptography loads. Anything else, and OpenSSL reads the whole file as
before, so "OpenSSL could not load a certificate from it" is still OpenSSL's own finding.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from edge_certd.core import der
from edge_certd.core.pem import der_to_pem, scan

__all__ = ["Entry", "Keys", "Store", "name_key", "names_of", "needed", "read_pem_store", "store_of_ders"]

NameKey = tuple[tuple[bytes, bytes], ...]

_CERT = b"CERTIFICATE"
_TRUSTED = b"TRUSTED CERTIFICATE"
# 64 base64 characters (and a CR) a line: what every writer of certificate PEM uses.
_MAX_LINE = 65
# The string types x509_name_canon() converts (ASN1_MASK_CANON), with the codec that gives
# the characters ASN1_STRING_to_UTF8() does.
_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String: one byte a character to OpenSSL
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}
# No real name has more; a key is built for a bounded number only.
_MAX_ATTRIBUTES = 64
# Closing over issuers: a real chain of anchors is a handful deep.
_MAX_ROUNDS = 16


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One certificate of a store.

    Attributes:
        pem: the text to hand OpenSSL: the block as the file has it (trust settings kept).
        der: the certificate's DER (without trust settings).
        plain: a CERTIFICATE block, one of the store's anchors as `certificates()` counts them.
        subject: its `name_key`, or None when the names cannot be read.
        issuer: its issuer's name as DER (keyed only for the few anchors picked).
    """

    pem: bytes
    der: bytes
    plain: bool
    subject: NameKey | None
    issuer: bytes | None


@dataclass(frozen=True, kw_only=True)
class Store:
    """A store's certificates, and whether it may be handed to OpenSSL in part."""

    entries: tuple[Entry, ...]
    clean: bool


def name_key(name_der: bytes) -> NameKey | None:
    """A key equal for every two names OpenSSL (or cryptography) calls equal; None when
    `name_der` is not a Name this reader can walk (a SEQUENCE of SETs of (OID, value))."""
    rdns = der.name_rdns(name_der, _MAX_ATTRIBUTES)
    if rdns is None:
        return None
    return tuple(sorted((oid, _canon(tag, value)) for rdn in rdns for oid, tag, value in rdn))


def _canon(tag: int, content: bytes) -> bytes:
    codec = _CODECS.get(tag)
    if codec is not None:
        try:
            return b"s" + "".join(content.decode(codec).split()).lower().encode()
        except UnicodeDecodeError:
            pass
    return b"r" + bytes((tag,)) + content


def names_of(cert_der: bytes) -> tuple[bytes, bytes] | None:
    """(issuer, subject) of a certificate as DER, or None when it is not one."""
    try:
        _tag, start, stop = der.header(cert_der, 0, len(cert_der))
        tag, at, tbs_end = der.header(cert_der, start, stop or 0)
        if tag != der.SEQUENCE or tbs_end is None:
            return None
        elements: list[tuple[int, int]] = []
        while at < tbs_end and len(elements) < 6:
            tag, content, end = der.header(cert_der, at, tbs_end)
            if end is None:
                return None
            if not (tag == 0xA0 and not elements):  # the optional [0] version
                elements.append((at, end))
            at = end
    except der.DerError:
        return None
    if len(elements) < 5:
        return None
    (i_start, i_end), (s_start, s_end) = elements[2], elements[4]
    return cert_der[i_start:i_end], cert_der[s_start:s_end]


class Keys:
    """`name_key` once for each distinct name, and each distinct PEM file read once: the
    stores of one device share most roots, and ca-bundle.pem is the system bundle's copy."""

    def __init__(self) -> None:
        self._seen: dict[bytes, NameKey | None] = {}
        self.stores: dict[bytes, Store] = {}

    def __call__(self, name_der: bytes) -> NameKey | None:
        if name_der not in self._seen:
            self._seen[name_der] = name_key(name_der)
        return self._seen[name_der]


def _entry(pem: bytes, cert_der: bytes, plain: bool, keys: Keys) -> Entry:
    names = names_of(cert_der)
    if names is None:
        return Entry(pem=pem, der=cert_der, plain=plain, subject=None, issuer=None)
    return Entry(pem=pem, der=cert_der, plain=plain, subject=keys(names[1]), issuer=names[0])


def _loads(cert_der: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(cert_der)
    except ValueError:
        return False
    return der.declared_length(cert_der) == len(cert_der)


def read_pem_store(data: bytes, keys: Keys | None = None) -> Store:
    """Every certificate of a PEM store, and whether the file is plain (see the module)."""
    keys = keys or Keys()
    if data in keys.stores:
        return keys.stores[data]
    blocks = scan(data)
    # A BEGIN line the scanner does not take (a label it does not know) is still a block
    # OpenSSL tries to read.
    clean = data.count(b"-----BEGIN ") == len(blocks)
    entries: list[Entry] = []
    for block in blocks:
        if block.label not in (_CERT, _TRUSTED) or not block.complete:
            clean = False
            continue
        lines = block.body.split(b"\n")
        if max(map(len, lines)) > _MAX_LINE:
            clean = False
        if block.start and data[block.start - 1 : block.start] != b"\n":
            clean = False
        try:
            body = _base64(lines)
        except ValueError:
            clean = False
            continue
        plain = block.label == _CERT
        cert_der = body if plain else body[: der.declared_length(body) or 0]
        if not _loads(cert_der) or not (plain or _aux_reads(body[len(cert_der) :])):
            clean = False
        entries.append(_entry(data[block.start : block.end] + b"\n", cert_der, plain, keys))
    store = keys.stores[data] = Store(entries=tuple(entries), clean=clean)
    return store


def _base64(lines: list[bytes]) -> bytes:
    """What base64.b64decode(validate=True) makes of the lines, all whitespace dropped.
    Strict decoding first, 2.5 times as fast: what it takes, the old way decodes alike, and
    what it refuses (whitespace in a line, odd padding) goes the old way.

    Raises:
        ValueError: not base64.
    """
    try:
        return binascii.a2b_base64(b"".join(lines), strict_mode=True)
    except binascii.Error:
        return base64.b64decode(b"".join(b"".join(lines).split()), validate=True)


def _aux_reads(aux: bytes) -> bool:
    if not aux:
        return True
    try:
        node, used = der.parse(aux)
    except der.DerError:
        return False
    return used == len(aux) and node.tag == der.SEQUENCE


def store_of_ders(ders: Sequence[bytes], keys: Keys | None = None) -> Store:
    """A JKS or PKCS#12 store's certificates (written out as PEM for OpenSSL)."""
    keys = keys or Keys()
    entries = tuple(_entry(der_to_pem(d), d, True, keys) for d in ders)
    return Store(entries=entries, clean=all(_loads(d) for d in ders))


def needed(store: Store, chain_der: Iterable[bytes], keys: Keys | None = None) -> list[Entry] | None:
    """The entries OpenSSL could use to verify `chain_der`, in the store's order: every one
    whose subject is the subject or issuer of a presented certificate, closed over their
    own issuers. None when the store must be handed over whole (not plain, or a name that
    cannot be read)."""
    if not store.clean:
        return None
    keys = keys or Keys()
    wanted: set[NameKey] = set()
    for cert_der in chain_der:
        names = names_of(cert_der)
        issuer, subject = (keys(names[0]), keys(names[1])) if names else (None, None)
        if issuer is None or subject is None:
            return None
        wanted.update((issuer, subject))
    if any(e.subject is None or e.issuer is None for e in store.entries):
        return None
    chosen: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        new = [i for i, e in enumerate(store.entries) if i not in chosen and e.subject in wanted]
        if not new:
            break
        chosen.update(new)
        for i in new:
            issuer_der = store.entries[i].issuer
            issuer = keys(issuer_der) if issuer_der is not None else None
            if issuer is None:
                return None  # an anchor whose issuer cannot be named: hand it all over
            wanted.add(issuer)
    else:
        return None  # deeper than any chain of anchors: let OpenSSL read it all
    return [e for i, e in enumerate(store.entries) if i in chosen]
