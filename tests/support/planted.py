"""Planted files for the tests: a FIFO, a link to /dev/zero, a sparse 1 GB file, and a
deadline that turns a hang into a failure instead of a stuck test run.

The deadline is SIGALRM raising in the main thread: a blocking open() of a FIFO, a read of
/dev/zero or a recursion all return to Python often enough to be interrupted (PEP 475
retries EINTR only when the handler returns).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

# Far above what a refusal costs (milliseconds), far below a test run's patience.
HANG = 20.0


class Hung(AssertionError):
    """The code under test did not return before the deadline: it would hang the daemon."""


@contextlib.contextmanager
def deadline(seconds: float = HANG) -> Iterator[None]:
    def expired(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < seconds


def fifo(path: Path) -> Path:
    """A named pipe nobody writes: opening it for reading without O_NONBLOCK blocks forever."""
    os.mkfifo(path, 0o644)
    return path


def link_to_zero(path: Path) -> Path:
    """A symlink to /dev/zero: reading it whole is a MemoryError, never an end of file."""
    path.symlink_to("/dev/zero")
    return path


def sparse(path: Path, size: int = 1 << 30) -> Path:
    """A file of `size` bytes that takes no disk (a 1 GB connection-string file)."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path
