"""What a PKCS#12 file will cost to open, and the keys it shows without opening. Pure.

A PFX names the cost of its own key derivations: the MAC's iteration count, and those of
the PBE or PBKDF2 algorithms that encrypt its contents. OpenSSL pays each one for every
password tried, so a 1 KB file asking for 2^31-1 iterations costs minutes per password.
They are read here, from the DER, before cryptography sees the file (RFC 7292, RFC 8018).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_certd.core import der

# OpenSSL and Windows write 2,048 or 10,000; 1,000,000 is far above any real export and
# still costs well under a second per password.
MAX_ITERATIONS = 1_000_000
# The sum over every derivation in one file: many cheap ones add up too.
MAX_TOTAL_ITERATIONS = 4 * MAX_ITERATIONS
# scrypt's cost is N * r * p; OpenSSL's own default is 16384 * 8 * 1.
MAX_SCRYPT_COST = 1 << 20

_PKCS5 = der.oid_bytes("1.2.840.113549.1.5")
_PKCS12_PBE = der.oid_bytes("1.2.840.113549.1.12.1")
_PBES2 = der.oid_bytes("1.2.840.113549.1.5.13")
_PBMAC1 = der.oid_bytes("1.2.840.113549.1.5.14")
_SCRYPT = der.oid_bytes("1.3.6.1.4.1.11591.4.11")
_KEY_BAGS = {
    der.oid_bytes("1.2.840.113549.1.12.10.1.1"),  # keyBag
    der.oid_bytes("1.2.840.113549.1.12.10.1.2"),
}  # pkcs8ShroudedKeyBag
_ENVELOPED = der.oid_bytes("1.2.840.113549.1.7.3")


@dataclass(frozen=True)
class Facts:
    """What the DER says before any password is tried.

    Attributes:
        refusal: why the file must not be handed to OpenSSL (its cost, or a structure
            this reader cannot follow), or None.
        visible_keys: key bags outside the encrypted parts: the file holds a key whatever
            the password.
        too_costly: the refusal is about cost (a ceiling), not about structure.
    """

    refusal: str | None
    visible_keys: int = 0
    too_costly: bool = False


# OID 1.2.840.113549.1.7.1 (pkcs7-data), which opens every PFX's authSafe.
_PKCS7_DATA_OID = bytes.fromhex("06092a864886f70d010701")


def looks_like_pfx(data: bytes) -> bool:
    """A quick look at the first bytes: PFX ::= SEQUENCE { version INTEGER 3, authSafe
    ContentInfo (pkcs7-data), ... } (RFC 7292, section 4)."""
    head = data[:32]
    return b"\x02\x01\x03" in head and _PKCS7_DATA_OID in head


def inspect(data: bytes) -> Facts:
    """Read the costs and the visible key bags of the PFX in `data`."""
    try:
        root, used = der.parse(data)
    except der.DerError as exc:
        return Facts(f"its structure cannot be checked before opening ({exc})")
    if root.tag != der.SEQUENCE or len(root.children) < 2:
        return Facts("it is not a PKCS#12 PFX structure")
    counts: list[int] = []
    problems: list[str] = []
    keys = 0
    if len(root.children) > 2:
        mac = root.children[2]
        counts.append(_mac_iterations(mac, problems))
    for node in _walk(root):
        if node.tag != der.SEQUENCE or not node.children or node.children[0].tag != der.OID:
            continue
        oid = node.children[0].content
        if oid in _KEY_BAGS:
            keys += 1
        elif oid == _ENVELOPED:
            problems.append("its contents are encrypted to a public key (envelopedData)")
        elif oid == _SCRYPT:
            _scrypt_cost(node, problems)
        elif oid.startswith((_PKCS5, _PKCS12_PBE)) and oid not in (_PBES2, _PBMAC1):
            counts.append(_pbe_iterations(node, problems))
    costly = bool(problems) and problems[-1].startswith("its scrypt cost")
    worst = max(counts, default=0)
    if worst > MAX_ITERATIONS:
        problems.append(
            f"it asks for {worst} key-derivation iterations, above the ceiling of "
            f"{MAX_ITERATIONS:,}; re-export it with a normal iteration count"
        )
    elif sum(counts) > MAX_TOTAL_ITERATIONS:
        problems.append(
            f"its key derivations add up to {sum(counts)} iterations, above the "
            f"ceiling of {MAX_TOTAL_ITERATIONS:,}"
        )
    costly = costly or worst > MAX_ITERATIONS or sum(counts) > MAX_TOTAL_ITERATIONS
    if used != len(data):
        problems.append(f"{len(data) - used} bytes of trailing data after the PFX")
    if costly:  # the cost is the reason a technician can act on: say it first
        problems.sort(key=lambda p: "ceiling" not in p)
    return Facts(problems[0] if problems else None, keys, costly)


def _walk(root: der.Node) -> list[der.Node]:
    out, todo = [], [root]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(node.children)
    return out


def _mac_iterations(mac: der.Node, problems: list[str]) -> int:
    # MacData ::= SEQUENCE { mac DigestInfo, macSalt OCTET STRING, iterations INTEGER DEFAULT 1 }
    if mac.tag != der.SEQUENCE or len(mac.children) < 2:
        problems.append("its MAC data cannot be read")
        return 0
    if len(mac.children) < 3:
        return 1
    return _count(mac.children[2], problems)


def _pbe_iterations(algorithm: der.Node, problems: list[str]) -> int:
    # PBEParameter, pkcs-12PbeParams and PBKDF2-params all open with { salt, iterationCount }.
    if len(algorithm.children) < 2 or algorithm.children[1].tag != der.SEQUENCE:
        problems.append("an encryption algorithm's parameters cannot be read")
        return 0
    params = algorithm.children[1].children
    if len(params) < 2:
        problems.append("an encryption algorithm's parameters cannot be read")
        return 0
    return _count(params[1], problems)


def _scrypt_cost(algorithm: der.Node, problems: list[str]) -> None:
    # scrypt-params ::= SEQUENCE { salt, costParameter, blockSize, parallelizationParameter, ... }
    try:
        params = algorithm.children[1].children
        cost = der.integer(params[1]) * der.integer(params[2]) * der.integer(params[3])
    except (IndexError, der.DerError):
        problems.append("its scrypt parameters cannot be read")
        return
    if not 0 < cost <= MAX_SCRYPT_COST:
        problems.append(f"its scrypt cost {cost} is above the ceiling of {MAX_SCRYPT_COST:,}")


def _count(node: der.Node, problems: list[str]) -> int:
    try:
        value = der.integer(node)
    except der.DerError:
        problems.append("an iteration count cannot be read")
        return 0
    if value < 1:
        problems.append(f"an iteration count of {value} is not valid")
        return 0
    return value
