"""Running `openssl verify` for `anchors`: its files in memory, its end waited for on a
pidfd, and a spare one started before its files exist. What a run's output means is
`anchors`' business.

Files in memory (memfd), named to the child as /proc/self/fd/N: a check writes nothing to
a disk, leaves nothing behind, and costs no directory to make and remove.

The spare: most of a run's time is OpenSSL starting (loading libcrypto and its configuration,
about 2.5 ms of 3.5 ms here). A spare is started with pipes for its files while the stores
are still being read, and the first store that needs a run of this shape feeds it. It reads
them in the order `openssl verify` opens them (apps/verify.c: the CA file in setup_verify(),
then the untrusted certificates, then the certificate to check), so feeding them in that
order cannot wedge on a full pipe.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Sequence

__all__ = ["ARGV", "MemoryFiles", "NoMemoryFiles", "Run", "Spare", "named", "start"]

# Every run checks a TLS server's chain, and never against OpenSSL's default store.
ARGV = ("verify", "-purpose", "sslserver", "-no-CAstore")
# Where a process finds its open files by number; openssl opens them from there.
_FD_DIR = "/proc/self/fd"
# openssl verify says a line or two; more is read no further.
_MAX_OUTPUT = 64 * 1024


class NoMemoryFiles(Exception):
    """The files handed to openssl cannot be made."""


class MemoryFiles:
    """The files of one check (the chain, the anchors, the runs' output); all closed at the end."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def __enter__(self) -> MemoryFiles:
        if not os.path.isdir(_FD_DIR):
            raise NoMemoryFiles(f"{_FD_DIR} is missing (is /proc mounted?)")
        return self

    def __exit__(self, *_exc: object) -> None:
        for fd in self.fds:
            os.close(fd)

    def file(self, name: str, content: bytes = b"") -> int:
        try:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)  # pass_fds hands it on to one child
        except OSError as exc:
            raise NoMemoryFiles(f"no file in memory for openssl ({exc.strerror or exc})") from exc
        self.fds.append(fd)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        return fd


def named(fd: int) -> str:
    return f"{_FD_DIR}/{fd}"


class Run:
    """One `openssl verify` process, and its output (a memory file it shares with nobody)."""

    def __init__(self, proc: subprocess.Popen[bytes], output: int) -> None:
        self.proc, self.output = proc, output
        self._waited = False
        self._outcome: tuple[int, bytes] | None = None

    def outcome(self, deadline: float) -> tuple[int, bytes] | None:
        """(exit status, output) once it has ended; None when it was killed at `deadline`
        (for every store that shares it)."""
        if not self._waited:
            self._waited = True
            if _wait(self.proc, deadline):
                self._outcome = (self.proc.returncode, os.pread(self.output, _MAX_OUTPUT, 0))
            else:
                self.stop()
        return self._outcome

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(argv: Sequence[str], memory: MemoryFiles, handed: Sequence[int]) -> Run:
    """Start one run that reads the memory files `handed` (named in `argv`).

    Raises:
        OSError: it cannot be started.
        NoMemoryFiles: no file for its output.
    """
    output = memory.file("openssl-output")
    return Run(_spawn(argv, output, handed), output)


def _spawn(argv: Sequence[str], output: int, handed: Sequence[int]) -> subprocess.Popen[bytes]:
    # Its output into memory, not a pipe: several run at once and none may block on a full pipe.
    return subprocess.Popen(argv, stdout=output, stderr=output, stdin=subprocess.DEVNULL, pass_fds=handed)


class Spare:
    """`openssl verify -no-CApath` with the CA file, the untrusted certificates and the
    certificate to check on pipes, started before any of them is known."""

    def __init__(self, openssl: str) -> None:
        self.openssl = openssl
        self.run: Run | None = None
        self.fed = False
        self._writers: list[int] = []
        self._output: int | None = None
        readers: list[int] = []
        try:
            self._output = os.memfd_create("openssl-output", os.MFD_CLOEXEC)
            for _ in range(3):
                reader, writer = os.pipe2(os.O_CLOEXEC)
                readers.append(reader)
                self._writers.append(writer)
            anchors, untrusted, leaf = (named(fd) for fd in readers)
            argv = [openssl, *ARGV, "-CAfile", anchors, "-no-CApath", "-untrusted", untrusted, leaf]
            proc = _spawn(argv, self._output, readers)
        except OSError:
            return  # no spare (close() lets its files go): each run starts when its files are ready
        finally:
            for reader in readers:
                os.close(reader)
        for writer in self._writers:
            os.set_blocking(writer, False)
        self.run = Run(proc, self._output)

    def takes(self, openssl: str, capath: str | None, untrusted: bool) -> bool:
        """Whether it can be the run with these arguments."""
        return (
            self.run is not None
            and not self.fed
            and (openssl, capath, untrusted) == (self.openssl, None, True)
        )

    def feed(self, anchors: bytes, untrusted: bytes, leaf: bytes, deadline: float) -> Run:
        """Hand it its files; it is then that run. A run that stops reading is left to its
        deadline, and one that has ended says why in its output."""
        assert self.run is not None
        self.fed = True
        for writer, content in zip(self._writers, (anchors, untrusted, leaf), strict=True):
            if not _write_all(writer, content, deadline):
                break
        self._close_writers()
        return self.run

    def close(self) -> None:
        """Kill it unless it was fed (a fed one is its check's to stop), and let its files go."""
        if self.run is not None and not self.fed:
            self.run.stop()
        self._close_writers()
        if self._output is not None:
            os.close(self._output)
            self._output = None

    def _close_writers(self) -> None:
        for writer in self._writers:
            os.close(writer)
        self._writers = []


def _write_all(fd: int, content: bytes, deadline: float) -> bool:
    view = memoryview(content)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        while view:
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return False
            view = view[os.write(fd, view) :]
    except OSError:  # EPIPE: it has ended
        return False
    return True


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether `proc` ended by `deadline`. A pidfd wakes at its exit; Popen.wait(timeout)
    polls with sleeps of up to 50 ms, more than a whole check takes."""
    remaining = max(0.0, deadline - time.monotonic())
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3, or not Linux
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], remaining)
    finally:
        os.close(pidfd)
    if not ready:
        return False
    proc.wait()
    return True
