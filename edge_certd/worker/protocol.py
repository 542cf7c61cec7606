"""Frames between the daemon and its judge worker: a 4-byte big-endian length, then bytes.

A job is two frames (a JSON header, the file's bytes); an answer is one JSON frame. The
parent treats every answer as untrusted: it must decode with core.codec or it is refused.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

# A verdict for a 1 MB file is a few KB; anything far larger is a misbehaving worker.
MAX_FRAME = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The other side closed the pipe or sent something that is not a frame."""


def write_frame(fd: int, *payloads: bytes) -> None:
    """Write one or more frames with as few system calls as the pipe allows: each write
    wakes the other side, and with 50,000 files those wake-ups are most of a sync."""
    data = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ProtocolError("the pipe was closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes:
    (size,) = struct.unpack(">I", read_exactly(fd, 4))
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is too large")
    return read_exactly(fd, size)


def encode_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
