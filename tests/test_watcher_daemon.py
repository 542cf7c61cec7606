"""The real daemon follows roots packages that dpkg renames into place, on a loaded machine,
and never takes dpkg's temporary names for packages or sources.

dpkg unpacks a new package's directory as NAME.dpkg-new and renames it to NAME at once, and
each file as FILE.dpkg-new renamed to FILE. Here that happens within a millisecond, 30
times, beside two CPU-bound processes; every step must be trusted within seconds, long
before the hourly rescan (set to a day here, so it cannot be what follows anything).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tree import Tree

from edge_certd.sync import report

ROUNDS = 30
FOLLOW_DEADLINE = 60.0  # seconds for one step on a machine two burners keep busy


@pytest.fixture
def burners() -> Iterator[None]:
    """Two CPU-bound processes beside the test, as CI runs it."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _trusted(tree: Tree) -> set[str]:
    return {item["sha256"] for item in report.list_cas(tree.load())}


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def _unpack_file(directory: Path, name: str, ca: CA) -> None:
    """As dpkg does: write NAME.dpkg-new, then rename it over NAME."""
    staged = directory / f"{name}.dpkg-new"
    staged.write_bytes(ca.cert_pem)
    staged.chmod(0o644)
    os.rename(staged, directory / name)


def _unpack_dir(roots: Path, name: str, *cas: CA) -> None:
    """A new package's directory, made as NAME.dpkg-new and renamed into place at once."""
    staged = roots / f"{name}.dpkg-new"
    staged.mkdir(mode=0o755)
    for i, ca in enumerate(cas):
        (staged / f"root-{i}.pem").write_bytes(ca.cert_pem)
    old = roots / name
    if old.exists():
        os.rename(old, roots / f"{name}.dpkg-old")
    os.rename(staged, old)
    shutil.rmtree(roots / f"{name}.dpkg-old", ignore_errors=True)


def test_packages_renamed_into_place_are_followed_on_a_loaded_machine(tree: Tree, burners: None) -> None:
    roots = tree.root / "usr/share/edge-certd/roots.d"
    roots.mkdir(parents=True)
    tree.write_config(package_roots_dir=str(roots), watch__rescan_interval=86400)
    a, b, c, d, e = (CA.root(f"Package Root {x}") for x in "ABCDE")
    follow: list[float] = []

    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()

        def step(action: Callable[[], object], wanted: set[str], what: str) -> None:
            mark = daemon.mark()
            start = time.monotonic()
            action()
            daemon.wait_synced(
                mark, check=lambda: _trusted(tree) == wanted, timeout=FOLLOW_DEADLINE, what=what
            )
            follow.append(time.monotonic() - start)

        previous: Path | None = None
        for i in range(ROUNDS):
            name = f"contoso-roots-{i}"
            directory = roots / name

            def install(
                name: str = name, directory: Path = directory, previous: Path | None = previous
            ) -> None:
                if previous is not None:
                    shutil.rmtree(previous)  # the last round's package is removed meanwhile
                _unpack_dir(roots, name, a)
                _unpack_file(directory, "root-1.pem", b)  # an upgrade on the heels of the rename

            step(install, {_sha(a), _sha(b)}, f"round {i}: {name} renamed into place")
            # The sync above read what was there; from now on only the watch on NAME/ tells.
            step(
                partial((directory / "root-2.pem").write_bytes, c.cert_pem),
                {_sha(x) for x in (a, b, c)},
                f"round {i}: a new file in {name}",
            )
            step(partial(_unpack_dir, roots, name, d), {_sha(d)}, f"round {i}: {name} replaced by a rename")
            step(
                partial(_unpack_file, directory, "root-9.pem", e),
                {_sha(d), _sha(e)},
                f"round {i}: a new file in the replaced {name}",
            )
            previous = directory

        log = daemon.log()
        status = tree.cli("status", "--json").stdout
    assert ".dpkg-" not in log, [line for line in log.splitlines() if ".dpkg-" in line]
    assert ".dpkg-" not in status
    print(
        f"\n{len(follow)} of {4 * ROUNDS} steps followed; time to follow: "
        f"median {statistics.median(follow):.2f} s, max {max(follow):.2f} s"
    )


def _user_namespaces() -> bool:
    probe = ["unshare", "-Ur", "sh", "-c", "echo 3 > /proc/sys/user/max_inotify_watches"]
    try:
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


def test_directories_past_the_inotify_limits_are_polled_and_said_once(tree: Tree) -> None:
    if not _user_namespaces():
        pytest.skip("needs unshare -Ur and per-namespace inotify limits (Linux >= 5.11)")
    roots = tree.root / "usr/share/edge-certd/roots.d"
    for name in ("p1", "p2", "p3"):
        (roots / name).mkdir(parents=True)
    tree.drop.mkdir(parents=True, exist_ok=True)
    tree.write_config(package_roots_dir=str(roots), watch__rescan_interval=86400)
    # Limits of this user namespace only: three watches (watchdog >= 3 shares one inotify
    # instance) or three instances (watchdog 2.2 opens one per directory). Of roots.d,
    # p1, p2, p3 and the drop directory, the last two in name order are past them.
    limits = (
        'echo 3 > /proc/sys/user/max_inotify_watches; echo 3 > /proc/sys/user/max_inotify_instances; "$@"'
    )
    dropped, packaged = CA.root("Dropped Past The Limit"), CA.root("Packaged Past The Limit")
    with RunningDaemon(tree, prefix=["unshare", "-Ur", "sh", "-c", limits, "sh"]) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (tree.drop / "root.pem").write_bytes(dropped.cert_pem)
        daemon.wait_synced(mark, check=lambda: _trusted(tree) == {_sha(dropped)}, timeout=FOLLOW_DEADLINE)
        mark = daemon.mark()
        _unpack_file(roots / "p3", "root.pem", packaged)
        wanted = {_sha(dropped), _sha(packaged)}
        daemon.wait_synced(mark, check=lambda: _trusted(tree) == wanted, timeout=FOLLOW_DEADLINE)
        log = daemon.log()
    said = [line for line in log.splitlines() if "inotify limits are reached" in line]
    assert sorted(line.split(" cannot be watched")[0].split()[-1] for line in said) == [
        str(roots / "p3"),
        str(tree.drop),
    ], log
