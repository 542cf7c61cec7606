"""Reading source directories safely.

Regular files only, never a symlink out of the directory, never past the size limit, and
never from a directory that someone other than root or the trusted group can write (the
directory's rules are `directory_rules.py`'s; the names never read are `names.py`'s).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from edge_certd.core.errors import SourceError
from edge_certd.core.model import Reason
from edge_certd.core.text import printable
from edge_certd.store.directory_rules import DirectoryRules, FileRule, file_problem, file_rule
from edge_certd.store.fsutil import ReadError, kind_of, read_bounded

# Imported `as` themselves: re-exported for daemon/watcher.py and tests/test_watcher.py,
# which import these names from here.
from edge_certd.store.names import PACKAGE_MANAGER_SUFFIXES as PACKAGE_MANAGER_SUFFIXES
from edge_certd.store.names import is_temporary_name as is_temporary_name
from edge_certd.store.names import package_dirs as package_dirs

# A Key Vault object version: 32 lower-case hex digits, as in
# https://<vault>.vault.azure.net/certificates/<name>/<version>.
_KEYVAULT_VERSION = re.compile(r"[0-9a-f]{32}")
# A name longer than this is cut where people see it (Linux allows 255 bytes).
_NAME_LIMIT = 255


@dataclass(frozen=True)
class SourceFile:
    """One entry of a source directory.

    Exactly one of `data` and `problem` is set. `problem` is a (code, message) pair.
    """

    path: str  # for people and the manifest: control characters escaped
    data: bytes | None
    problem: tuple[Reason, str] | None = None
    fs_path: str = ""  # the real name on disk, for tighten_mode
    gone: bool = False  # deleted between the listing and the read: not a source any more

    @property
    def content_sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else ""


def scan_directory(path: str, max_bytes: int, rules: DirectoryRules | None = None) -> Iterator[SourceFile]:
    """Read every candidate file directly inside `path`, in name order, one at a time, so
    that a directory of 50,000 files never holds more than one file's bytes in memory.

    With `rules`, each file is held to its directory's standard (see file_rule).

    Raises:
        SourceError: the directory itself cannot be listed (raised here, not when iterating).
    """
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(path, f"cannot be opened ({exc.strerror})") from None
    names: list[str] = []
    links: list[str] = []
    try:
        # The entry types come with the listing: no lstat per file to find the symlinks.
        with os.scandir(dir_fd) as listing:
            for entry in listing:
                names.append(entry.name)
                if entry.is_symlink():
                    links.append(entry.name)
    except OSError as exc:
        os.close(dir_fd)
        raise SourceError(path, f"cannot be listed ({exc.strerror})") from None
    names.sort()
    rule = file_rule(path, os.fstat(dir_fd), rules) if rules is not None else None
    return _read_entries(path, dir_fd, names, links, max_bytes, rule)


def _read_entries(
    path: str, dir_fd: int, names: list[str], links: list[str], max_bytes: int, rule: FileRule | None
) -> Iterator[SourceFile]:
    try:
        real_dir = os.path.realpath(path)
        versions = linked_versions(path, real_dir, names, links)
        for name in names:
            if is_temporary_name(name) or name in versions:
                continue
            entry = read_entry(path, real_dir, dir_fd, name, max_bytes, rule)
            if not entry.gone:  # removed while we read: the next sync sees it gone
                yield entry
    finally:
        os.close(dir_fd)


def display_path(fs_path: str) -> str:
    """How a source file is named to people and in the manifest (see read_entry)."""
    directory, name = os.path.split(fs_path)
    return os.path.join(directory, printable(name, limit=_NAME_LIMIT))


@functools.lru_cache(maxsize=64)
def _display_prefix(path: str) -> str:
    """display_path's directory part for names in `path`, with its separator."""
    return os.path.join(os.path.dirname(os.path.join(path, "x")), "")


def linked_versions(path: str, real_dir: str, names: Sequence[str], links: Sequence[str]) -> frozenset[str]:
    """Version files `<stem>.<version>` that a symlink in the directory points into.

    The KeyVaultForLinux VM extension writes `<Vault>.<Cert>.<version>` for every version
    it fetches, does not promise to delete the old ones, and points the symlink
    `<Vault>.<Cert>` at the newest. Only the link is read: reading old versions would keep
    trusting a CA that Key Vault rotated away, and reading the newest directly too would
    name it twice. A link that leaves the directory supersedes nothing (it is refused when
    read). The pattern is this specific, so it applies to every source directory alike.
    `links` are the names among `names` that are symlinks.
    """
    stems = set()
    for name in links:
        real = os.path.realpath(os.path.join(path, name))
        stem = _version_stem(os.path.basename(real))
        if stem and os.path.dirname(real) == real_dir:
            stems.add(stem)
    if not stems:
        return frozenset()
    linked = set(links)
    return frozenset(name for name in names if _version_stem(name) in stems and name not in linked)


def _version_stem(name: str) -> str | None:
    """`<stem>` of `<stem>.<Key Vault version>`, else None."""
    stem, _, version = name.rpartition(".")
    return stem if stem and _KEYVAULT_VERSION.fullmatch(version) else None


def read_entry(
    path: str, real_dir: str, dir_fd: int, name: str, max_bytes: int, rule: FileRule | None = None
) -> SourceFile:
    """Read one directory entry under every rule above; never raises for a bad entry."""
    fs_path = os.path.join(path, name)
    if name.isprintable() and len(name) <= _NAME_LIMIT:
        shown = _display_prefix(path) + name  # what display_path gives, without its split and join
    else:
        shown = display_path(fs_path)
    entry = _read_entry(shown, real_dir, dir_fd, path, name, max_bytes, rule)
    return SourceFile(entry.path, entry.data, entry.problem, fs_path, entry.gone)


def _read_entry(
    shown: str, real_dir: str, dir_fd: int, path: str, name: str, max_bytes: int, rule: FileRule | None
) -> SourceFile:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return SourceFile(
            shown,
            None,
            (Reason.UNREADABLE, f"cannot be read ({exc.strerror})"),
            gone=isinstance(exc, FileNotFoundError),
        )
    target = name
    if stat.S_ISLNK(info.st_mode):
        resolved = _resolve_inside(os.path.join(path, name), real_dir)
        if isinstance(resolved, tuple):
            return SourceFile(shown, None, resolved)
        target = resolved
        try:
            info = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            return SourceFile(shown, None, (Reason.UNREADABLE, f"cannot be read ({exc.strerror})"))
    kind_problem = _not_regular(info)
    if kind_problem:
        return SourceFile(shown, None, kind_problem)
    if info.st_nlink > 1:
        return SourceFile(
            shown,
            None,
            (
                Reason.HARD_LINK,
                f"is a hard link ({info.st_nlink} names); copy the file instead of linking it",
            ),
        )
    mode_problem = file_problem(info, rule, os.path.join(path, target))
    if mode_problem:
        return SourceFile(shown, None, mode_problem)
    if info.st_size > max_bytes:
        return SourceFile(shown, None, _too_large(max_bytes))
    return _read_limited(shown, dir_fd, target, max_bytes)


def open_source(path: str) -> int:
    """A descriptor for the file a person named (`add`, `package`), opened as sync reads
    sources: a link only when it stays in its directory, O_NOFOLLOW, O_NONBLOCK, and a
    regular file by fstat. The caller closes it.

    Raises:
        ReadError: the reason in a technician's words.
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if os.path.islink(path):
        resolved = _resolve_inside(path, os.path.realpath(directory))
        if isinstance(resolved, tuple):
            raise ReadError(path, resolved[1], errno.ELOOP)
        name = resolved
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ReadError(path, f"cannot be opened ({exc.strerror or exc})", exc.errno or errno.EIO) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ReadError(path, f"is {kind_of(info.st_mode)}, not a regular file")
    return fd


def _resolve_inside(link: str, real_dir: str) -> str | tuple[Reason, str]:
    """The symlink's target name when it stays inside the directory, else a problem."""
    try:
        real = os.path.realpath(link, strict=True)
    except FileNotFoundError:
        return (Reason.DANGLING_SYMLINK, "is a symlink to a file that does not exist")
    except OSError as exc:
        return (Reason.SYMLINK_LOOP, f"is a symlink that cannot be resolved ({exc.strerror})")
    if os.path.dirname(real) != real_dir:
        return (
            Reason.SYMLINK_OUTSIDE,
            f"is a symlink to {printable(real)}, outside the source "
            "directory; edge-certd only follows links that stay inside it",
        )
    return os.path.basename(real)


def _not_regular(info: os.stat_result) -> tuple[Reason, str] | None:
    if stat.S_ISREG(info.st_mode):
        return None
    return (Reason.NOT_REGULAR_FILE, f"is {kind_of(info.st_mode)}, not a regular file")


def _too_large(max_bytes: int) -> tuple[Reason, str]:
    return (
        Reason.TOO_LARGE,
        f"is larger than {max_bytes} bytes (policy.max_file_bytes); a root CA file is a few kilobytes",
    )


def _read_limited(shown: str, dir_fd: int, name: str, max_bytes: int) -> SourceFile:
    # read_bounded opens with O_NOFOLLOW (the entry could be swapped for a symlink after the
    # checks above) and O_NONBLOCK (a FIFO swapped in must not hang the daemon).
    try:
        data = read_bounded(name, max_bytes, dir_fd=dir_fd)
    except ReadError as exc:
        if exc.errno == errno.EFBIG:
            return SourceFile(shown, None, _too_large(max_bytes))
        if exc.errno == errno.EINVAL:
            return SourceFile(shown, None, (Reason.NOT_REGULAR_FILE, exc.reason))
        return SourceFile(shown, None, (Reason.UNREADABLE, exc.reason), gone=exc.missing)
    return SourceFile(shown, data)


def tighten_mode(path: str) -> bool:
    """chmod 0600 a file that holds a private key; True when the mode changed.

    A symlink is never chmodded through blindly: when it leads to a file inside its own
    directory (a link to a hidden `.key.pem`, read as the link's content), that file is the
    one that leaks the key and is tightened; a link out of the directory was never read, so
    nothing is changed. The file is opened O_NOFOLLOW relative to the directory, so a link
    swapped in after the check is not followed either.
    """
    directory, name = os.path.split(path)
    try:
        if os.path.islink(path):
            resolved = _resolve_inside(path, os.path.realpath(directory))
            if isinstance(resolved, tuple):
                return False
            name = resolved
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd
        )
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) & 0o077 == 0:
            return False
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o700 | 0o600)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
