"""A small, bounded BER/DER reader: enough to look inside PKCS#12, PKCS#8 and OpenSSL's trust
settings before any of it reaches cryptography. Pure.

Why not let cryptography look: a PKCS#12 file names its own key-derivation cost, and
OpenSSL pays it before it can say anything (a 1 KB file asking for 2^31-1 iterations costs
minutes per password tried). The cost has to be read, and refused, first.

Every function raises only `DerError` (a ValueError). The reader accepts BER's indefinite
lengths and constructed OCTET STRINGs, because OpenSSL reads PKCS#12 files written that way,
and a check that a different encoding could walk around would check nothing. Its work is
bounded by a node budget and a depth limit, not by the input's good will.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
OCTET_STRING_CONSTRUCTED = 0x24
OID = 0x06
SET = 0x31

MAX_DEPTH = 40
MAX_NODES = 100_000


class DerError(ValueError):
    """The bytes are not BER/DER this reader can walk within its limits."""


class DerLimit(DerError):
    """The bytes nest deeper or hold more elements than the reader will walk."""


@dataclass(frozen=True)
class Node:
    """One element. `content` is the value bytes of a primitive element (or the joined chunks
    of a constructed OCTET STRING); `children` are the elements inside a constructed one,
    or inside an OCTET STRING whose content is itself a complete element."""

    tag: int
    content: bytes = b""
    children: tuple[Node, ...] = field(default=())

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def header(data: bytes, pos: int, end: int) -> tuple[int, int, int | None]:
    """(tag, offset of the content, offset after the content or None when indefinite).

    Raises:
        DerError: a multi-byte tag, a length over 4 bytes, or past `end`.
    """
    if pos + 2 <= end and data[pos + 1] < 0x80 and data[pos] & 0x1F != 0x1F:
        # The short form, most elements of a certificate: reading a 150-root bundle asks
        # for about 3,600 headers.
        stop = pos + 2 + data[pos + 1]
        if stop > end:
            raise DerError("element runs past its container")
        return data[pos], pos + 2, stop
    tag, start, length = _header(data, pos, end)
    if length is None:
        return tag, start, None
    if start + length > end:
        raise DerError("element runs past its container")
    return tag, start, start + length


# One attribute of a Name: its OID's content, its value's tag, its value's content.
Attribute = tuple[bytes, int, bytes]


def name_rdns(name_der: bytes, max_attributes: int) -> list[list[Attribute]] | None:
    """The RDNs of a Name (X.501: a SEQUENCE of SETs of SEQUENCE {OID, value}), in order,
    each its attributes as the SET holds them; None when `name_der` is not one, with
    definite lengths and nothing after it, or holds more than `max_attributes`."""
    rdns: list[list[Attribute]] = []
    count = 0
    try:
        tag, at, end = header(name_der, 0, len(name_der))
        if tag != SEQUENCE or end != len(name_der):
            return None
        while at < end:
            tag, rdn_at, rdn_end = header(name_der, at, end)
            if tag != SET or rdn_end is None:
                return None
            rdn: list[Attribute] = []
            while rdn_at < rdn_end:
                tag, atv_at, atv_end = header(name_der, rdn_at, rdn_end)
                count += 1
                if tag != SEQUENCE or atv_end is None or count > max_attributes:
                    return None
                tag, oid_at, oid_end = header(name_der, atv_at, atv_end)
                if tag != OID or oid_end is None:
                    return None
                tag, value_at, value_end = header(name_der, oid_end, atv_end)
                if value_end != atv_end:
                    return None
                rdn.append((name_der[oid_at:oid_end], tag, name_der[value_at:value_end]))
                rdn_at = atv_end
            rdns.append(rdn)
            at = rdn_end
    except DerError:
        return None
    return rdns


def declared_length(data: bytes) -> int | None:
    """How long the SEQUENCE at the start of `data` says it is, header included, whether or
    not `data` holds that much (a truncated or padded certificate is told apart by the
    caller); None when `data` does not start with a definite-length SEQUENCE."""
    try:
        tag, start, length = _header(data, 0, len(data))
    except DerError:
        return None
    if tag != SEQUENCE or length is None:
        return None
    return start + length


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int | None]:
    """(tag, offset of the content, declared content length or None when indefinite)."""
    if pos + 2 > end:
        raise DerError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used by these formats")
    if first < 0x80:
        return tag, pos + 2, first
    if first == 0x80:
        if not tag & 0x20:
            raise DerError("indefinite length on a primitive element")
        return tag, pos + 2, None
    count = first & 0x7F
    if count > 4 or pos + 2 + count > end:
        raise DerError("bad length")
    return tag, pos + 2 + count, int.from_bytes(data[pos + 2 : pos + 2 + count], "big")


class _Reader:
    def __init__(self) -> None:
        self.nodes = 0

    def element(self, data: bytes, pos: int, end: int, depth: int) -> tuple[Node, int]:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise DerLimit("too many or too deeply nested elements")
        tag, start, stop = header(data, pos, end)
        if not tag & 0x20:
            assert stop is not None  # header() refuses indefinite primitives
            content = data[start:stop]
            return Node(tag, content, self._inner(content, tag, depth)), stop
        children = []
        at = start
        limit = end if stop is None else stop
        while True:
            if stop is None and data[at : at + 2] == b"\0\0":
                at += 2
                break
            if stop is not None and at == stop:
                break
            child, at = self.element(data, at, limit, depth + 1)
            children.append(child)
        if tag == OCTET_STRING_CONSTRUCTED:
            if any(c.tag != OCTET_STRING for c in children):
                raise DerError("a constructed OCTET STRING holds something else")
            joined = b"".join(c.content for c in children)
            return Node(OCTET_STRING, joined, self._inner(joined, OCTET_STRING, depth)), at
        return Node(tag, b"", tuple(children)), at

    def _inner(self, content: bytes, tag: int, depth: int) -> tuple[Node, ...]:
        """An OCTET STRING often wraps a whole structure (a PKCS#12 SafeContents): read it."""
        if tag != OCTET_STRING or content[:1] != b"\x30":
            return ()
        try:
            node, used = self.element(content, 0, len(content), depth + 1)
        except DerLimit:
            raise
        except DerError:
            return ()  # opaque bytes (encrypted, or just data): nothing to read inside
        return (node,) if used == len(content) else ()


def parse(data: bytes) -> tuple[Node, int]:
    """The first element of `data` and the offset just after it.

    Raises:
        DerError: not readable within the limits.
    """
    return _Reader().element(data, 0, len(data), 0)


def integer(node: Node) -> int:
    """The value of an INTEGER node.

    Raises:
        DerError: not an INTEGER.
    """
    if node.tag != INTEGER or not node.content:
        raise DerError("not an INTEGER")
    if len(node.content) > 16:
        return 2**128 if node.content[0] < 0x80 else -(2**128)  # far past any ceiling
    return int.from_bytes(node.content, "big", signed=True)


def oid_bytes(text: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER given in dotted form."""
    parts = [int(p) for p in text.split(".")]
    out = bytearray()
    for number in [parts[0] * 40 + parts[1], *parts[2:]]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
