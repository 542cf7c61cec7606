"""Names that are never a source, and the roots packages' directories.

Which entries of a source directory are only half there (a temp file of scp, rsync,
WinSCP, an editor or a package manager), which subdirectories of `package_roots_dir` are
roots packages, and which package a manifest's source path came from. The watcher and the
scan must agree on these names, so they are said once, here.
"""

from __future__ import annotations

import os

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


def is_temporary_name(name: str) -> bool:
    """True for dotfiles and the temp names that scp, rsync, WinSCP, editors and the package
    managers leave: never a source file, never a roots package's directory."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


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
