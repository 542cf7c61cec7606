"""PEM: one linear scan for blocks, and small helpers shared by the targets and verify. Pure.

`der_to_pem` writes what the stdlib's `ssl.DER_cert_to_PEM_cert` writes, byte for byte (a
test compares them): importing `ssl` maps libssl into the long-lived daemon, 1.2 MB of its
idle memory for a base64 call (issue 24).

The scan is a single pass over the BEGIN and END markers, in order. A regular expression
of the shape `BEGIN (label)(.*?)END \\1` looks for the END of every BEGIN from that BEGIN
on, so a file of BEGIN lines with no END cost time quadratic in its size (288 KB of
`-----BEGIN A-----` lines took 56 s). Here each byte is looked at a bounded number of times.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

# A marker: the label is bounded, so no match can run far from where it started.
_MARKER = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 #]{1,64})-----")


@dataclass(frozen=True)
class Block:
    """One BEGIN marker and what follows it.

    Attributes:
        label: the BEGIN line's label, e.g. b"CERTIFICATE".
        body: the text between the BEGIN and the END line (empty when there is no END).
        start: the offset of the BEGIN marker.
        end: the offset after the END marker, or of whatever cut the block short.
        complete: an END marker with the same label closed it.
        end_label: the label of the END marker that closed it (differs when mismatched),
            or None when no END followed before the next BEGIN or the end of the data.
    """

    label: bytes
    body: bytes
    start: int
    end: int
    complete: bool
    end_label: bytes | None = None


def scan(data: bytes) -> list[Block]:
    """Every BEGIN marker in `data` as a Block, in order, in one pass."""
    blocks: list[Block] = []
    open_label: bytes | None = None
    open_start = body_start = 0
    for match in _MARKER.finditer(data):
        kind, label = match.group(1), match.group(2)
        if kind == b"BEGIN":
            if open_label is not None:  # a BEGIN inside a block: the first one has no END
                blocks.append(Block(open_label, b"", open_start, match.start(), False))
            open_label, open_start, body_start = label, match.start(), match.end()
        elif open_label is not None:
            same = label == open_label
            body = data[body_start : match.start()] if same else b""
            blocks.append(Block(open_label, body, open_start, match.end(), same, label))
            open_label = None
        # An END with no BEGIN before it closes nothing: it is only text.
    if open_label is not None:
        blocks.append(Block(open_label, b"", open_start, len(data), False))
    return blocks


def gaps(data: bytes, blocks: list[Block]) -> Iterator[tuple[int, int]]:
    """The (start, end) spans of `data` outside every block."""
    at = 0
    for block in blocks:
        if block.start > at:
            yield at, block.start
        at = max(at, block.end)
    if at < len(data):
        yield at, len(data)


def iter_pem_ders(data: bytes) -> Iterator[bytes]:
    """The DER of each complete CERTIFICATE block; blocks that do not decode are skipped."""
    for block in scan(data):
        if not block.complete or block.label != b"CERTIFICATE":
            continue
        try:
            yield base64.b64decode(b"".join(block.body.split()), validate=True)
        except ValueError:
            continue


def der_to_pem(der: bytes) -> bytes:
    """One CERTIFICATE block, 64 base64 characters a line (RFC 7468), as `ssl` writes it."""
    text = base64.b64encode(der)
    lines = b"".join(text[at : at + 64] + b"\n" for at in range(0, len(text), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"-----END CERTIFICATE-----\n"


def pem_fingerprints(data: bytes) -> set[str]:
    """SHA-256 fingerprints of every certificate in a PEM bundle."""
    return {hashlib.sha256(der).hexdigest() for der in iter_pem_ders(data)}
