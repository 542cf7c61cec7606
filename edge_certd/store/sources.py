"""Reading source directories safely.

Regular files only, never a symlink out of the directory, never past the size limit, and
never from a directory that someone other than root or the trusted group can write.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_certd.core.errors import SourceError
from edge_certd.core.model import Reason
from edge_certd.core.text import printable
from edge_certd.store.fsutil import ReadError, ensure_directory, kind_of, read_bounded

# The names the package managers give a file or directory that is not (or no longer) the
# package's: dpkg unpacks each file, and a new directory, as NAME.dpkg-new and renames it
# into place; a conffile's other versions are .dpkg-old, .dpkg-dist and .dpkg-tmp
# (lib/dpkg/dpkg.h in dpkg's source; run-parts(8) skips the same four);
# dpkg-maintscript-helper(1) leaves .dpkg-remove, .dpkg-backup, .dpkg-bak and .dpkg-staging;
# ucf(1) leaves .ucf-old, .ucf-new and .ucf-dist. None of them is ever a source, whether a
# file in a source directory or a directory in package_roots_dir.
PACKAGE_MANAGER_SUFFIXES = (
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-old",
    ".dpkg-dist",
    ".dpkg-remove",
    ".dpkg-backup",
    ".dpkg-bak",
    ".dpkg-staging",
    ".ucf-new",
    ".ucf-old",
    ".ucf-dist",
)

# Names that are half-written or editor leftovers; acting on them would install a partial file.
# rsync and many tools write ".name.XXXXXX" and rename, so every dotfile is skipped.
TEMPORARY_SUFFIXES = (
    *PACKAGE_MANAGER_SUFFIXES,
    "~",
    ".swp",
    ".swx",
    ".swo",
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".filepart",  # WinSCP, which many technicians use instead of scp
    ".crdownload",
    ".bak",
)

# A Key Vault object version: 32 lower-case hex digits, as in
# https://<vault>.vault.azure.net/certificates/<name>/<version>.
_KEYVAULT_VERSION = re.compile(r"[0-9a-f]{32}")


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


@dataclass(frozen=True)
class DirectoryRules:
    trusted_group: str = "edge-certd"
    check_ownership: bool = True
    # Roots packages' directory (config.package_roots_dir): it and each subdirectory must be
    # root's alone, as dpkg leaves them; the edge-certd group drops files elsewhere.
    package_roots_dir: str | None = None


def is_temporary_name(name: str) -> bool:
    """True for dotfiles and the temp names that scp, rsync, WinSCP, editors and the package
    managers leave: never a source file, never a roots package's directory."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def check_directory(path: str, rules: DirectoryRules) -> None:
    """Refuse a directory anyone untrusted could write.

    A roots package's directory must be root's alone, and so must the directory holding it:
    whoever could write that could rename a package's directory in or out.

    Raises:
        SourceError: it is missing, not a directory, world-writable or wrongly owned.
    """
    roots = rules.package_roots_dir
    if roots is not None and path.rstrip("/") == roots.rstrip("/"):
        # Named as a source only when it could not be listed (package_dirs): what its
        # packages gave is held until it can be.
        _check_root_only(roots, rules)
        raise SourceError(path, "cannot be listed, so its roots packages cannot be read")
    if roots is not None and os.path.dirname(path.rstrip("/")) == roots.rstrip("/"):
        _check_root_only(roots, rules)
        _check_root_only(path, rules)
        return
    _check_shared(path, rules)


def _check_root_only(path: str, rules: DirectoryRules) -> None:
    info = _check_shared(path, rules)
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWGRP:
        raise SourceError(
            path,
            f"is group-writable (mode {mode:04o}); a roots package's directory is written "
            f"only by dpkg, as root; run: chmod g-w {path}",
        )
    if rules.check_ownership and info.st_uid not in (0, os.geteuid()):
        raise SourceError(
            path,
            f"is owned by uid {info.st_uid}, not root; a roots package's directory is "
            f"written only by dpkg, as root; run: chown root:root {path}",
        )


def package_dirs(roots_dir: str) -> list[str]:
    """The roots packages' directories: each real subdirectory of `roots_dir`, by name.

    A symlink or a dotfile is no package's (dpkg makes real directories), and neither is
    a temporary name: dpkg makes a new package's directory as NAME.dpkg-new and renames it
    to NAME at once. A missing `roots_dir` means no package is installed.
    """
    try:
        with os.scandir(roots_dir) as entries:
            names = sorted(
                e.name for e in entries if not is_temporary_name(e.name) and e.is_dir(follow_symlinks=False)
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        return [roots_dir]  # refused by check_directory, so what it gave is held
    return [os.path.join(roots_dir, name) for name in names]


def package_name(source: str, roots_dir: str | None) -> str | None:
    """The roots package a source path (as the manifest names it) came from, else None."""
    if not roots_dir:
        return None
    prefix = roots_dir.rstrip("/") + "/"
    if not source.startswith(prefix):
        return None
    name, sep, _ = source[len(prefix) :].partition("/")
    return name if sep and name else None


def _check_shared(path: str, rules: DirectoryRules) -> os.stat_result:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SourceError(path, "does not exist") from None
    except OSError as exc:
        raise SourceError(path, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SourceError(path, "is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise SourceError(
            path,
            f"is world-writable (mode {mode:04o}), so anyone on the device "
            f"could make it trust a CA; run: chmod o-w {path}",
        )
    if not rules.check_ownership:
        return info
    trusted_gid = _group_id(rules.trusted_group)
    if info.st_uid not in (0, os.geteuid()) and info.st_gid != trusted_gid:
        raise SourceError(
            path,
            f"is owned by uid {info.st_uid}, not by root or the "
            f"{rules.trusted_group} group; run: "
            f"chown root:{rules.trusted_group} {path}",
        )
    if mode & stat.S_IWGRP and info.st_gid not in (0, trusted_gid, os.getegid()):
        raise SourceError(
            path,
            f"is writable by group id {info.st_gid}, which is not "
            f"{rules.trusted_group}; run: chmod g-w {path}",
        )
    return info


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
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError as exc:
        os.close(dir_fd)
        raise SourceError(path, f"cannot be listed ({exc.strerror})") from None
    rule = file_rule(path, os.fstat(dir_fd), rules) if rules is not None else None
    return _read_entries(path, dir_fd, names, max_bytes, rule)


FileRule = Literal["root_only", "not_world_writable"]


def file_rule(path: str, dir_info: os.stat_result, rules: DirectoryRules) -> FileRule | None:
    """What a file in this directory must be, beyond a regular file of its own.

    A roots package's files, like their directory, are root's alone (dpkg writes them); a
    file of mode 0666 there could be rewritten by anyone. Elsewhere a world-writable file
    matters only where others may reach it: the drop directory's 2770 keeps them out, a
    Key Vault export directory of 0755 lets them in.
    """
    roots = rules.package_roots_dir
    if roots is not None and os.path.dirname(path.rstrip("/")) == roots.rstrip("/"):
        return "root_only" if rules.check_ownership else "not_world_writable"
    return "not_world_writable" if dir_info.st_mode & stat.S_IXOTH else None


def _read_entries(
    path: str, dir_fd: int, names: list[str], max_bytes: int, rule: FileRule | None
) -> Iterator[SourceFile]:
    try:
        real_dir = os.path.realpath(path)
        versions = linked_versions(path, real_dir, names)
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
    return os.path.join(directory, printable(name, limit=255))


def linked_versions(path: str, real_dir: str, names: Sequence[str]) -> frozenset[str]:
    """Version files `<stem>.<version>` that a symlink in the directory points into.

    The KeyVaultForLinux VM extension writes `<Vault>.<Cert>.<version>` for every version
    it fetches, does not promise to delete the old ones, and points the symlink
    `<Vault>.<Cert>` at the newest. Only the link is read: reading old versions would keep
    trusting a CA that Key Vault rotated away, and reading the newest directly too would
    name it twice. A link that leaves the directory supersedes nothing (it is refused when
    read). The pattern is this specific, so it applies to every source directory alike.
    """
    stems = set()
    for name in names:
        link = os.path.join(path, name)
        if not os.path.islink(link):
            continue
        real = os.path.realpath(link)
        stem = _version_stem(os.path.basename(real))
        if stem and os.path.dirname(real) == real_dir:
            stems.add(stem)
    return frozenset(
        name
        for name in names
        if _version_stem(name) in stems and not os.path.islink(os.path.join(path, name))
    )


def _version_stem(name: str) -> str | None:
    """`<stem>` of `<stem>.<Key Vault version>`, else None."""
    stem, _, version = name.rpartition(".")
    return stem if stem and _KEYVAULT_VERSION.fullmatch(version) else None


def read_entry(
    path: str, real_dir: str, dir_fd: int, name: str, max_bytes: int, rule: FileRule | None = None
) -> SourceFile:
    """Read one directory entry under every rule above; never raises for a bad entry."""
    shown = display_path(os.path.join(path, name))
    entry = _read_entry(shown, real_dir, dir_fd, path, name, max_bytes, rule)
    return SourceFile(entry.path, entry.data, entry.problem, os.path.join(path, name), entry.gone)


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
    mode_problem = _unsafe_mode(info, rule, os.path.join(path, target))
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


def _unsafe_mode(info: os.stat_result, rule: FileRule | None, fs_path: str) -> tuple[Reason, str] | None:
    mode = stat.S_IMODE(info.st_mode)
    shown = printable(fs_path)
    if rule == "root_only":
        if info.st_uid not in (0, os.geteuid()):
            return (
                Reason.UNSAFE_MODE,
                f"is owned by uid {info.st_uid}, not root; a roots package's files are written "
                f"only by dpkg, as root; run: chown root:root {shown}",
            )
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                Reason.UNSAFE_MODE,
                f"is writable by others (mode {mode:04o}); a roots package's files are written "
                f"only by dpkg, as root; run: chmod go-w {shown}",
            )
    if rule is not None and mode & stat.S_IWOTH:
        return (
            Reason.UNSAFE_MODE,
            f"is world-writable (mode {mode:04o}), so anyone on the device could make it "
            f"trust a CA; run: chmod o-w {shown}",
        )
    return None


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


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


DROP_DIR_MODE = 0o2770  # setgid: files a technician drops keep the edge-certd group


def ensure_drop_dir(path: str, group: str) -> None:
    """Create the drop directory when missing: root and `group` may write, nobody else.

    Raises:
        WriteError: it cannot be created.
    """
    if os.path.isdir(path):
        return
    ensure_directory(path, 0o755)
    gid = _group_id(group)
    try:
        if gid is None:
            raise KeyError(group)
        os.chown(path, -1, gid)
        os.chmod(path, DROP_DIR_MODE)
    except (KeyError, OSError):
        os.chmod(path, 0o700)  # no such group here: only the owner may drop files
