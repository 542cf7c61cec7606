"""Who may write a source directory, and so what edge-certd may trust from it.

Checked before any file is read: a directory that someone other than root or the trusted
group can write could make the device trust any CA. A roots package's directory is
root's alone, as dpkg leaves it. The drop directory is created to this standard.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from typing import Literal

from edge_certd.core.errors import SourceError
from edge_certd.core.model import Reason
from edge_certd.core.text import printable
from edge_certd.store.fsutil import ensure_directory


@dataclass(frozen=True)
class DirectoryRules:
    """What a source directory must be, from the configuration's `sources` section."""

    trusted_group: str = "edge-certd"
    check_ownership: bool = True
    # Roots packages' directory (config.package_roots_dir): it and each subdirectory must be
    # root's alone, as dpkg leaves them; the edge-certd group drops files elsewhere.
    package_roots_dir: str | None = None


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


def file_problem(info: os.stat_result, rule: FileRule | None, fs_path: str) -> tuple[Reason, str] | None:
    """Why a file may not be read under its directory's `rule` (see file_rule), else None."""
    mode = stat.S_IMODE(info.st_mode)
    if rule is None or (not mode & (stat.S_IWGRP | stat.S_IWOTH) and info.st_uid in (0, os.geteuid())):
        return None  # nearly every file: no name to escape
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
