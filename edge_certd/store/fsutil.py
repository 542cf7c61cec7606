"""Atomic writes that happen only on change, bounded reads that never block, and cleanup
of what a crash left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Collection

from edge_certd.core.errors import EdgeCertdError, WriteError

# Temp files carry this prefix and suffix, so a crash's leftovers are recognisably ours and
# never end in `.crt` (update-ca-certificates would pick those up).
TEMP_PREFIX = ".edge-certd-"
TEMP_SUFFIX = ".tmp"

# read_bytes' limit: far above any state file, the system bundle (about 200 KB) or a Java
# truststore, far below what would hurt a device with 256 MB of memory.
STATE_LIMIT = 64 * 1024 * 1024

# O_NONBLOCK: opening a FIFO (or a device) planted under the name returns at once instead of
# waiting for a writer. O_NOCTTY: a terminal never becomes ours. O_CLOEXEC: no child inherits it.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


class ReadError(EdgeCertdError, OSError):
    """A file cannot be read safely: missing, a link, not a regular file, too large, unreadable.

    An OSError too, so callers that treat any OSError as "cannot be read" keep doing so.
    `reason` is in a technician's words and never holds the file's content.
    """

    def __init__(self, path: str, reason: str, code: int = errno.EINVAL) -> None:
        OSError.__init__(self, code, reason, path)
        self.path = path
        self.reason = reason
        self.missing = code == errno.ENOENT

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def kind_of(mode: int) -> str:
    """'a FIFO (named pipe)', 'a symbolic link', ... for a st_mode; 'a regular file' for one."""
    return "a regular file" if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_bounded(path: str, limit: int, *, follow_links: bool = False, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them.

    Opened with O_NOFOLLOW (unless `follow_links`) and O_NONBLOCK, checked with fstat to be
    a regular file before a byte is read, and read to `limit` + 1 bytes at most, so a FIFO,
    a device, a link to /dev/zero or a 1 GB file each give a ReadError at once instead of a
    hang or a MemoryError. `dir_fd` makes `path` relative to that directory.

    Raises:
        ReadError: the reason in a technician's words (`missing` is True when it does not exist).
    """
    flags = _READ_FLAGS if follow_links else _READ_FLAGS | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise ReadError(
                path, "is a symbolic link; edge-certd does not follow links here", errno.ELOOP
            ) from None
        code = exc.errno or errno.EIO
        raise ReadError(path, f"cannot be opened ({exc.strerror or exc})", code) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError(path, f"is {kind_of(info.st_mode)}, not a regular file", errno.EINVAL)
        if info.st_size > limit:
            raise ReadError(path, _too_large(limit), errno.EFBIG)
        chunks = []
        remaining = limit + 1  # one byte more tells "exactly the limit" from "over it" (it may grow)
        # The first read asks for the size fstat gave (and a byte more): a 1 MB buffer per
        # small file is an mmap and munmap each, 50,000 times in a directory of junk.
        want = info.st_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, max(want, 4096)))
            want = 1 << 20
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except ReadError:
        raise
    except OSError as exc:
        raise ReadError(path, f"cannot be read ({exc.strerror or exc})", exc.errno or errno.EIO) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ReadError(path, _too_large(limit), errno.EFBIG)
    return data


def _too_large(limit: int) -> str:
    return f"is larger than {limit} bytes, far more than this file should ever hold"


def read_bytes(path: str, limit: int = STATE_LIMIT) -> bytes | None:
    """The file's bytes, or None when it does not exist.

    Links are followed (the paths are edge-certd's own or root's configuration), but a
    FIFO, a device or a file past `limit` is refused, never waited on.

    Raises:
        ReadError: it exists and cannot be read safely (an OSError too).
    """
    try:
        return read_bounded(path, limit, follow_links=True)
    except ReadError as exc:
        if exc.missing:
            return None
        raise


def write_atomic(path: str, data: bytes, mode: int = 0o644, sync_directory: bool = True) -> bool:
    """Replace `path` with `data` unless it already holds exactly that.

    A temp file in the same directory is written, fsynced and renamed over `path`, so
    readers see the old or the new content, never a mix. A caller writing many files to one
    directory passes `sync_directory=False` and calls `fsync_directory` once at the end.

    The directory is opened once and every step is taken relative to it, so a directory
    swapped mid-write cannot split the temp file from its rename. The old file is compared
    only when it is a regular file of exactly `len(data)` bytes, opened without following a
    link and without blocking: a FIFO, a device or a link planted under the name (someone
    who may write node_exporter's textfile directory) is simply renamed over, never read.

    Returns:
        True when the file was written, False when it already held `data`.

    Raises:
        WriteError: the directory is read-only, full, or missing.
    """
    directory = os.path.dirname(path) or "."
    name = os.path.basename(path)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise WriteError(path, _reason(exc)) from None
    try:
        if _holds(dir_fd, name, data, mode):
            return False
        temp = f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd)
            try:
                os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; this is not
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            if sync_directory:
                _fsync_fd(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise WriteError(path, _reason(exc)) from None
    finally:
        os.close(dir_fd)
    return True


def _holds(dir_fd: int, name: str, data: bytes, mode: int) -> bool:
    """True when `name` is a regular file, not a link, of mode `mode`, holding exactly `data`."""
    try:
        fd = os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False  # missing, a link, unreadable: whatever it is, it is replaced
    try:
        info = os.fstat(fd)
        # The size first: a FIFO, a device or a grown file is never read at all.
        if not stat.S_ISREG(info.st_mode) or info.st_size != len(data) or stat.S_IMODE(info.st_mode) != mode:
            return False
        chunks = []
        remaining = len(data) + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_file(path: str) -> bool:
    """Remove `path`; True when it existed. Raises WriteError when it cannot be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise WriteError(path, _reason(exc)) from None
    return True


def fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable across power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (tmpfs on old kernels) refuse; the rename already happened


def remove_stale_temp_files(directory: str, targets: Collection[str] | None = None) -> list[str]:
    """Delete temp files an interrupted write left in `directory`; return their names.

    Call it only while no live writer can be using them (under the lock that guards the
    files). `targets`, when given, limits the cleanup to the temp files of those names.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    prefixes = tuple(f"{TEMP_PREFIX}{t}." for t in targets) if targets is not None else (TEMP_PREFIX,)
    for name in names:
        if name.startswith(prefixes) and name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def ensure_directory(path: str, mode: int = 0o755) -> None:
    """Create `path` and its parents when missing. Raises WriteError."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, _reason(exc)) from None


def read_bytes_quietly(path: str) -> bytes | None:
    """The file's bytes, or None when it is missing or cannot be read safely."""
    try:
        return read_bytes(path)
    except OSError:
        return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"not writable ({exc.strerror})"
    return exc.strerror or str(exc)
