"""Atomic writes that happen only on change, and cleanup of what a crash left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Collection

from edge_certd.core.errors import WriteError

# Temp files carry this prefix and suffix, so a crash's leftovers are recognisably ours and
# never end in `.crt` (update-ca-certificates would pick those up).
TEMP_PREFIX = ".edge-certd-"
TEMP_SUFFIX = ".tmp"


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomic(path: str, data: bytes, mode: int = 0o644, sync_directory: bool = True) -> bool:
    """Replace `path` with `data` unless it already holds exactly that.

    A temp file in the same directory is written, fsynced and renamed over `path`, so
    readers see the old or the new content, never a mix. A caller writing many files to one
    directory passes `sync_directory=False` and calls `fsync_directory` once at the end.

    Returns:
        True when the file was written, False when it already held `data`.

    Raises:
        WriteError: the directory is read-only, full, or missing.
    """
    current = read_bytes_quietly(path)
    if current == data and _mode_of(path) == mode:
        return False
    directory = os.path.dirname(path) or "."
    temp = os.path.join(
        directory, f"{TEMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    )
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; this is not
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        if sync_directory:
            fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise WriteError(path, _reason(exc)) from None
    return True


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
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (tmpfs on old kernels) refuse; the rename already happened
    finally:
        os.close(fd)


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
    """The file's bytes, or None when it is missing or cannot be read."""
    try:
        return read_bytes(path)
    except OSError:
        return None


def _mode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"not writable ({exc.strerror})"
    return exc.strerror or str(exc)
