"""Source directories are read safely: who may write them, and how each entry is opened.

The directory checks run through the real CLI (`sync`, `status`); the per-open
defences (O_NOFOLLOW, O_NONBLOCK, the size limit while reading) are shown on
`sources._read_limited` directly, because they guard the moment *after* the checks,
when an entry is swapped under us, which no outside test can time reliably.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.tree import Tree

from edge_certd.core.errors import SourceError
from edge_certd.store.directory_rules import DirectoryRules, check_directory
from edge_certd.store.sources import _read_limited, scan_directory

NOBODY = 65534  # nobody / nogroup on Debian


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def trusted(tree: Tree) -> set[str]:
    listed = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    return {item["sha256"] for item in listed}


@pytest.fixture
def first(tree: Tree) -> Iterator[CA]:
    """A tree with one root already trusted from the drop directory."""
    ca = CA.root("Kept Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "kept.pem").write_bytes(ca.cert_pem)
    assert tree.cli("sync").returncode == 0
    yield ca


def _refused(tree: Tree, first: CA, reason: str) -> None:
    newcomer = CA.root("Newcomer")
    (tree.drop / "new.pem").write_bytes(newcomer.cert_pem)
    done = tree.cli("sync")
    assert done.returncode == 3, "a refused source directory is a rejected input"
    assert reason in done.stdout + done.stderr, done.stdout + done.stderr
    assert trusted(tree) == {sha(first)}, "a refused directory gave a new CA, or lost the old"
    status = json.loads(tree.cli("status", "--json").stdout)
    assert [e["path"] for e in status["source_errors"]] == [str(tree.drop)]
    assert reason in status["source_errors"][0]["reason"]


def test_world_writable_drop_dir_is_refused_and_says_how_to_fix_it(tree: Tree, first: CA) -> None:
    tree.drop.chmod(0o777)
    _refused(tree, first, "world-writable")
    assert "chmod o-w" in json.loads(tree.cli("status", "--json").stdout)["source_errors"][0]["reason"]
    tree.drop.chmod(0o755)
    assert tree.cli("sync").returncode == 0
    assert len(trusted(tree)) == 2  # fixed: the newcomer comes in


def test_sticky_world_writable_dir_is_refused_too(tree: Tree, first: CA) -> None:
    tree.drop.chmod(0o1777)  # /tmp-style: anyone may still add files
    _refused(tree, first, "world-writable")


def test_dir_owned_by_another_user_is_refused(tree: Tree, first: CA) -> None:
    os.chown(tree.drop, NOBODY, NOBODY)
    _refused(tree, first, f"owned by uid {NOBODY}")


def test_dir_writable_by_an_untrusted_group_is_refused(tree: Tree, first: CA) -> None:
    os.chown(tree.drop, 0, NOBODY)
    tree.drop.chmod(0o775)
    _refused(tree, first, f"writable by group id {NOBODY}")


def test_dir_of_another_user_in_the_trusted_group_is_accepted(tree: Tree, first: CA) -> None:
    """The 'or the edge-certd group' half of the rule, with nogroup standing in for it
    (creating a group would change this machine)."""
    tree.write_config(sources__trusted_group="nogroup")
    os.chown(tree.drop, NOBODY, NOBODY)
    tree.drop.chmod(0o2770)
    newcomer = CA.root("Group Newcomer")
    (tree.drop / "new.pem").write_bytes(newcomer.cert_pem)
    assert tree.cli("sync").returncode == 0
    assert trusted(tree) == {sha(first), sha(newcomer)}


def test_check_directory_refuses_what_is_not_a_directory(tmp_path: Path) -> None:
    rules = DirectoryRules()
    with pytest.raises(SourceError, match="does not exist"):
        check_directory(str(tmp_path / "missing"), rules)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="is not a directory"):
        check_directory(str(tmp_path / "file"), rules)
    check_directory(str(tmp_path), rules)  # root-owned 0700: fine


# -- per entry ---------------------------------------------------------------------------


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "src"
    directory.mkdir()
    return directory


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def _scan(directory: Path, limit: int = 1 << 20) -> dict[str, tuple[str, ...] | None]:
    """name → problem code (None when read) for every entry."""
    return {
        os.path.basename(f.path): (f.problem[0] if f.problem else None)
        for f in scan_directory(str(directory), limit)
    }


def test_symlinks_are_followed_only_when_they_stay_in_the_directory(src: Path, tmp_path: Path) -> None:
    root = CA.root("Linked")
    (src / "real.pem").write_bytes(root.cert_pem)
    (src / "inside.pem").symlink_to("real.pem")
    (src / "sub").mkdir()
    (src / "sub/deeper.pem").write_bytes(root.cert_pem)
    (src / "into-sub.pem").symlink_to("sub/deeper.pem")
    outside = tmp_path / "outside.pem"
    outside.write_bytes(root.cert_pem)
    (src / "out.pem").symlink_to(outside)
    (src / "dotdot.pem").symlink_to("../outside.pem")
    (src / "shadow.pem").symlink_to("/etc/shadow")
    # A chain of links that leaves and comes back still ends inside: that is fine.
    (tmp_path / "hop").symlink_to(src / "real.pem")
    (src / "round-trip.pem").symlink_to(tmp_path / "hop")
    found = _scan(src)
    assert found["inside.pem"] is None and found["round-trip.pem"] is None
    for name in ("into-sub.pem", "out.pem", "dotdot.pem", "shadow.pem"):
        assert found[name] == "symlink_outside", name
    assert found["sub"] == "not_regular_file"


def test_open_uses_o_nofollow_so_a_swapped_in_symlink_is_not_followed(src: Path) -> None:
    """Between the lstat() checks and the open(), an entry can become a symlink; the
    open itself must refuse it (ELOOP), even one that points inside."""
    (src / "real.pem").write_bytes(CA.root("Swapped").cert_pem)
    (src / "swapped.pem").symlink_to("real.pem")
    fd = _open_dir(src)
    try:
        entry = _read_limited("swapped.pem", fd, "swapped.pem", 1 << 20)
    finally:
        os.close(fd)
    assert entry.data is None and entry.problem is not None
    assert entry.problem[0] == "unreadable"


def test_open_uses_o_nonblock_so_a_swapped_in_fifo_cannot_hang_us(src: Path) -> None:
    os.mkfifo(src / "pipe.pem")  # no writer ever: a blocking open would wait for ever
    fd = _open_dir(src)
    result: list[object] = []
    reader = threading.Thread(
        target=lambda: result.append(_read_limited("pipe.pem", fd, "pipe.pem", 1 << 20)), daemon=True
    )
    reader.start()
    reader.join(5)
    os.close(fd)
    assert result, "opening a FIFO blocked"
    entry = result[0]
    assert entry.problem is not None and entry.problem[0] == "not_regular_file"  # type: ignore[attr-defined]


def test_size_limit_is_enforced_while_reading_not_only_by_stat(src: Path) -> None:
    """A 10 GB sparse file read directly (as if stat had lied, or it grew after): the read
    stops one byte past the limit, at once."""
    with open(src / "huge.pem", "wb") as handle:
        handle.write(CA.root("Huge").cert_pem)
        handle.truncate(10 * 1024**3)
    fd = _open_dir(src)
    # Counted in bytes read (rchar), not seconds: these machines are shared and noisy.
    before = _bytes_read_so_far()
    try:
        entry = _read_limited("huge.pem", fd, "huge.pem", 1 << 20)
    finally:
        os.close(fd)
    assert entry.problem is not None and entry.problem[0] == "too_large"
    assert _bytes_read_so_far() - before < 4 << 20


def _bytes_read_so_far() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def test_size_limit_counts_bytes_that_arrive_after_the_stat(src: Path) -> None:
    """stat() sees a small file; a writer extends it before the read: still refused."""
    path = src / "grows.pem"
    path.write_bytes(CA.root("Grows").cert_pem)
    limit = path.stat().st_size + 10
    fd = _open_dir(src)
    try:
        with open(path, "ab") as handle:
            handle.write(b"#" * 4096)  # lands after the stat in scan_directory's order
        entry = _read_limited("grows.pem", fd, "grows.pem", limit)
    finally:
        os.close(fd)
    assert entry.problem is not None and entry.problem[0] == "too_large"


def test_exactly_the_limit_is_read_and_one_byte_more_is_not(src: Path) -> None:
    data = CA.root("Exact").cert_pem
    (src / "exact.pem").write_bytes(data)
    assert _scan(src, len(data))["exact.pem"] is None
    assert _scan(src, len(data) - 1)["exact.pem"] == "too_large"


def test_only_regular_files_are_read(src: Path) -> None:
    os.mkfifo(src / "fifo.pem")
    os.mknod(src / "null.pem", 0o020644, os.makedev(1, 3))
    (src / "dir.pem").mkdir()
    (src / "file.pem").write_bytes(CA.root("Regular").cert_pem)
    os.link(src / "file.pem", src / "hard.pem")
    found = _scan(src)
    assert found["fifo.pem"] == found["null.pem"] == found["dir.pem"] == "not_regular_file"
    assert found["hard.pem"] == found["file.pem"] == "hard_link"  # both names count
