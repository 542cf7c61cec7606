"""Faults under the running daemon: each keeps the previous trust, says why, and heals.

Every test starts `edge-certd run` on a temporary tree (the real update-ca-certificates
behind a wrapper the test can make fail or hang), breaks one thing, drops a new root CA,
and then checks three things:
- the previous trust state is intact, byte for byte;
- STATUS= (through a real NOTIFY_SOCKET) and `edge-certd status --json` give the reason;
- once the fault is gone the daemon catches up by itself: retries with backoff, the
  inotify watch, or the next reload.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import Mark, RunningDaemon, wait_until
from support.invariants import check_settled, fingerprints
from support.tree import Tree, make_tree, require_tool

RETRY = {"watch__retry_initial_seconds": 0.3, "watch__retry_max_seconds": 1.0}


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def drop(tree: Tree, name: str, data: bytes) -> Path:
    """Put a file in the drop directory whole, the way `scp` then `mv` would."""
    temp = tree.drop / f".{name}.part"
    temp.write_bytes(data)
    return temp.rename(tree.drop / name)


def trust_snapshot(tree: Tree) -> dict[str, bytes]:
    """Every file that decides what the device trusts."""
    files = [tree.system_bundle, tree.edge_roots, tree.bundles / "ca-bundle.pem", tree.env_file]
    if tree.ca_dir.exists():
        files += sorted(tree.ca_dir.iterdir())
    return {str(p): p.read_bytes() for p in files if p.exists()}


def status_json(tree: Tree) -> dict:  # type: ignore[type-arg]
    done = tree.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Tree]:
    """A tree whose update command fails while `ctl/fail` exists and hangs while `ctl/hang`
    exists (writing its pid to ctl/hang.pid first)."""
    require_tool("update-ca-certificates")
    tree = make_tree(tmp_path / "device", mozilla_count=2)
    ctl = tree.root / "ctl"
    ctl.mkdir()
    wrapper = tree.root / "fault-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo call >> "{ctl}/calls"\n'
        f'if [ -e "{ctl}/fail" ]; then echo "simulated: trust store is locked" >&2; exit 1; fi\n'
        f'if [ -e "{ctl}/hang" ]; then echo $$ > "{ctl}/hang.pid"; sleep 600; fi\n'
        f'exec "{tree.root}/update-wrapper" "$@"\n'
    )
    wrapper.chmod(0o755)
    tree.write_config(trust_store__update_command=[str(wrapper)], **RETRY)
    tree.drop.mkdir(parents=True, exist_ok=True)
    yield tree


@contextlib.contextmanager
def started(tree: Tree, first: CA) -> Iterator[RunningDaemon]:
    """The daemon running with `first` trusted."""
    drop(tree, "first.pem", first.cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        assert fingerprints(tree.edge_roots) == {sha(first)}
        yield daemon


def _degraded_and_intact(
    tree: Tree, daemon: RunningDaemon, before: dict[str, bytes], reason: str, mark: Mark
) -> str:
    line = daemon.wait_synced(
        mark,
        lambda s: s.startswith("degraded") and reason in s,
        what=f"the end of a sync with STATUS=degraded: …{reason}…",
    )
    assert "retry in" in line
    # Retries go on meanwhile, and each one writes the new CA into ca_dir until the update
    # fails; with the lock held none runs while the test looks.
    with daemon.hold_lock():
        assert trust_snapshot(tree) == before, "the previous trust state changed"
        doc = status_json(tree)
    assert reason in (doc["daemon"]["degraded"] or "")
    assert doc["last_sync"]["result"] == "failed" and doc["last_sync"]["error"]
    return line


def _recovers(tree: Tree, daemon: RunningDaemon, want: set[str], mark: Mark) -> None:
    daemon.wait_synced(
        mark,
        lambda s: not s.startswith("degraded"),
        what="the end of a sync whose STATUS= is no longer degraded",
    )
    assert fingerprints(tree.edge_roots) == want
    assert status_json(tree)["last_sync"]["result"] == "ok"
    assert daemon.alive


def test_failing_update_command_keeps_trust_reports_and_retries(faulty: Tree) -> None:
    first, second = CA.root("Fault First"), CA.root("Fault Second")
    with started(faulty, first) as daemon:
        before = trust_snapshot(faulty)
        (faulty.root / "ctl/fail").touch()
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        _degraded_and_intact(faulty, daemon, before, "failed (exit 1)", mark)
        assert "simulated: trust store is locked" in status_json(faulty)["last_sync"]["error"]
        calls = faulty.root / "ctl/calls"
        tried = len(calls.read_text().splitlines())
        wait_until(lambda: len(calls.read_text().splitlines()) >= tried + 2, what="two retries with backoff")
        mark = daemon.mark()
        (faulty.root / "ctl/fail").unlink()
        _recovers(faulty, daemon, {sha(first), sha(second)}, mark)
    check_settled(faulty, {sha(first), sha(second)}, fingerprints_of_system(faulty))


def fingerprints_of_system(tree: Tree) -> set[str]:
    """The system's own roots: what the system bundle holds besides edge-certd's CAs."""
    ours = {sha_of_file(p) for p in tree.ca_dir.iterdir()} if tree.ca_dir.exists() else set()
    return fingerprints(tree.system_bundle) - ours


def sha_of_file(path: Path) -> str:
    from edge_certd.core.pem import iter_pem_ders

    return hashlib.sha256(next(iter_pem_ders(path.read_bytes()))).hexdigest()


def test_hanging_update_command_is_killed_after_the_timeout(faulty: Tree) -> None:
    faulty.write_config(trust_store__update_timeout=1.0)
    first, second = CA.root("Hang First"), CA.root("Hang Second")
    with started(faulty, first) as daemon:
        before = trust_snapshot(faulty)
        (faulty.root / "ctl/hang").touch()
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        _degraded_and_intact(faulty, daemon, before, "timed out", mark)
        hung = int((faulty.root / "ctl/hang.pid").read_text())
        # The whole process group went, the `sleep 600` child included.
        wait_until(lambda: not _group_alive(hung), what="the hung update's group to die")
        mark = daemon.mark()
        (faulty.root / "ctl/hang").unlink()
        _recovers(faulty, daemon, {sha(first), sha(second)}, mark)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def mounted(argv_list: list[list[str]], target: Path) -> Iterator[None]:
    """Run the mount commands; unmount `target` (all layers) whatever happens."""
    try:
        for argv in argv_list:
            subprocess.run(argv, check=True, capture_output=True)
        yield
    finally:
        for _ in argv_list:
            subprocess.run(["umount", str(target)], capture_output=True, check=False)


def test_full_bundle_directory_keeps_the_old_bundles_whole(faulty: Tree) -> None:
    require_tool("mount")
    first, second = CA.root("Full First"), CA.root("Full Second")
    faulty.bundles.mkdir(parents=True)
    with (
        mounted([["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(faulty.bundles)]], faulty.bundles),
        started(faulty, first) as daemon,
    ):
        old_roots = faulty.edge_roots.read_bytes()
        old_bundle = (faulty.bundles / "ca-bundle.pem").read_bytes()
        filler = faulty.bundles / "filler"
        with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        line = daemon.wait_synced(
            mark, "no space left", what="the end of a sync with STATUS= naming the full disk"
        )
        assert line.startswith("degraded") and str(faulty.bundles) in line
        with daemon.hold_lock():  # no retry half-way through writing them
            # The runtime bundles are the old ones, complete: never a truncated PEM.
            assert faulty.edge_roots.read_bytes() == old_roots
            assert (faulty.bundles / "ca-bundle.pem").read_bytes() == old_bundle
            assert sorted(p.name for p in faulty.bundles.iterdir()) == [
                "ca-bundle.pem",
                "edge-roots.pem",
                "filler",
            ]
        assert "no space left" in status_json(faulty)["daemon"]["degraded"]
        mark = daemon.mark()
        filler.unlink()
        _recovers(faulty, daemon, {sha(first), sha(second)}, mark)


def test_read_only_ca_dir_rolls_back_and_heals_when_writable(faulty: Tree) -> None:
    first, second = CA.root("RO First"), CA.root("RO Second")
    with started(faulty, first) as daemon:
        before = trust_snapshot(faulty)
        ca_dir = str(faulty.ca_dir)
        with mounted(
            [["mount", "--bind", ca_dir, ca_dir], ["mount", "-o", "remount,bind,ro", ca_dir]], faulty.ca_dir
        ):
            mark = daemon.mark()
            runs = faulty.update_runs()
            drop(faulty, "second.pem", second.cert_pem)
            (faulty.drop / "first.pem").unlink()  # a removal must not happen half-way either
            _degraded_and_intact(faulty, daemon, before, "Read-only file system", mark)
            assert faulty.update_runs() == runs, "the update ran on a half-applied ca_dir"
            mark = daemon.mark()
        _recovers(faulty, daemon, {sha(second)}, mark)


def test_deleted_and_recreated_drop_dir_keeps_trust_until_it_is_back(faulty: Tree) -> None:
    first, second = CA.root("Dir First"), CA.root("Dir Second")
    with started(faulty, first) as daemon:
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        # The whole sync, not its first file: edge-roots.pem is written before ca-bundle.pem.
        daemon.wait_synced(mark, "2 CAs trusted")
        assert fingerprints(faulty.edge_roots) == {sha(first), sha(second)}
        before, runs = trust_snapshot(faulty), faulty.update_runs()
        saved = {p.name: p.read_bytes() for p in faulty.drop.iterdir()}
        mark = daemon.mark()
        shutil.rmtree(faulty.drop)
        line = daemon.wait_synced(
            mark, "does not exist", what="the end of a sync naming the missing drop directory"
        )
        assert str(faulty.drop) in line
        assert trust_snapshot(faulty) == before
        errors = status_json(faulty)["source_errors"]
        assert [e["reason"] for e in errors] == ["does not exist"], errors
        # Back with the same files, whole, the way a restore renames a directory into place
        # (filled in place, a sync between mkdir and the last file would rightly drop CAs).
        restored = faulty.root / "drop-restored"  # same file system: rename() is atomic
        restored.mkdir()
        for name, data in saved.items():
            (restored / name).write_bytes(data)
        mark = daemon.mark()
        restored.rename(faulty.drop)
        daemon.wait_synced(
            mark, lambda s: "does not exist" not in s, what="the end of a sync without the source error"
        )
        assert status_json(faulty)["source_errors"] == []
        # Nothing changes, nothing was removed on the way.
        assert trust_snapshot(faulty) == before
        assert faulty.update_runs() == runs, "trust was removed and re-added"


@pytest.mark.parametrize(
    "damage",
    [b'{"version": 1, "cas": [{"sha', b"", b"\0" * 300, b'{"version": 1, "cas": 7}'],
    ids=["truncated", "empty", "zeros", "wrong-shape"],
)
def test_corrupt_manifest_is_rebuilt_without_touching_trust(faulty: Tree, damage: bytes) -> None:
    first, second = CA.root("Manifest First"), CA.root("Manifest Second")
    with started(faulty, first) as daemon:
        runs = faulty.update_runs()
        manifest = faulty.state / "manifest.json"
        manifest.write_bytes(damage)
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)  # a reload syncs, so it reads the damaged manifest
        ready = daemon.wait_ready(mark)  # after the reload's sync, which logged it
        assert "corrupt" in daemon.log(), "the corrupt manifest was not reported"
        rebuilt = json.loads(manifest.read_bytes())
        assert [c["sha256"] for c in rebuilt["cas"]] == [sha(first)]
        assert rebuilt["cas"][0]["sources"] == [str(faulty.drop / "first.pem")]
        assert faulty.update_runs() == runs, "a rebuilt manifest must not re-run the update"
        assert not ready.fields["STATUS"].startswith("degraded")
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        daemon.wait_synced(mark, "2 CAs trusted", what="life to go on")
        assert fingerprints(faulty.edge_roots) == {sha(first), sha(second)}


def test_broken_config_at_reload_keeps_the_running_one(faulty: Tree) -> None:
    first, second = CA.root("Config First"), CA.root("Config Second")
    with started(faulty, first) as daemon:
        good = faulty.config_path.read_text()
        faulty.config_path.write_text(good + "policy:\n  min_rsa_bits: lots\n  surprise: 1\n")
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(lambda m: m.get("RELOADING") == "1", mark, what="RELOADING=1")
        ready = daemon.wait_ready(mark).fields
        assert "configuration" in ready["STATUS"] and "refused" in ready["STATUS"], ready
        log = daemon.log()
        assert "reload refused" in log and "min_rsa_bits" in log and "surprise" in log
        # `edge-certd status` itself refuses the broken file, so read what the daemon wrote.
        recorded = json.loads((faulty.state / "daemon.json").read_bytes())
        assert "configuration refused" in recorded["status_line"]
        # Still working, with the old configuration. STATUS= keeps naming the refused
        # configuration, so the sync's end shows in the daemon's record only.
        mark = daemon.mark()
        drop(faulty, "second.pem", second.cert_pem)
        daemon.wait_synced(
            mark,
            check=lambda: fingerprints(faulty.edge_roots) == {sha(first), sha(second)},
            what="a sync under the old configuration",
        )
        assert daemon.alive
        # Fixed and reloaded: the note goes away.
        faulty.config_path.write_text(good)
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        ready = daemon.wait_ready(mark).fields
        assert "refused" not in ready["STATUS"], ready
        assert "configuration reloaded" in daemon.log()
