"""`edge-certd run` with real inotify, real files, real signals and a real NOTIFY_SOCKET.

Every wait is for an event: READY=1, or the end of a sync (tests/support/daemonrun.py).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.oddcerts import pem, self_signed
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def trusted(tree: Tree) -> set[str]:
    both = [tree.edge_roots, tree.system_bundle]
    if not all(p.exists() for p in both):
        return set()
    return pem_fingerprints(both[0].read_bytes()) & pem_fingerprints(both[1].read_bytes())


@pytest.fixture
def start(tree: Tree) -> Iterator:  # type: ignore[type-arg]
    started: list[RunningDaemon] = []

    def _start(**kwargs: object) -> RunningDaemon:
        daemon = RunningDaemon(tree, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield _start
    for daemon in started:
        daemon.close()


def test_notify_sequence_through_start_reload_and_stop(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start(watchdog_usec=400_000)
    daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", what="WATCHDOG=1")
    mark = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_ready(mark)
    assert daemon.stop() == 0  # STOPPING=1 and all before it are in by then
    fields = daemon.fields()
    firsts = [fields.index(f) for f in ("READY=1", "WATCHDOG=1", "RELOADING=1", "STOPPING=1")]
    assert firsts == sorted(firsts), fields
    assert (
        fields.index("READY=1")
        < fields.index("RELOADING=1")
        < len(fields) - 1 - fields[::-1].index("READY=1")
        < fields.index("STOPPING=1")
    )
    assert any(f.startswith("STATUS=0 CAs trusted") for f in fields)


def test_cp_then_mv_installs_and_deletion_uninstalls(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    root = CA.root("Moved In Root")
    staging = tree.root / "staging.pem"
    staging.write_bytes(root.cert_pem)
    mark = daemon.mark()
    os.rename(staging, tree.drop / "moved.pem")
    daemon.wait_synced(mark, status="1 CA trusted")
    assert sha(root) in trusted(tree)
    mark = daemon.mark()
    (tree.drop / "moved.pem").unlink()
    daemon.wait_synced(mark, status="0 CAs trusted")
    assert sha(root) not in trusted(tree)
    assert "removed root CA" in daemon.log()


def test_a_file_installed_with_its_mode_is_trusted_at_once(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    """`install -m 0644 SRC DROP/` writes, closes, then chmods within one clock tick: the
    chmod must not make the complete file look "still being written" (held for 120 s)."""
    daemon = start()
    root = CA.root("Installed With Mode")
    source = tree.root / "root-source.pem"
    source.write_bytes(root.cert_pem)
    mark = daemon.mark()
    subprocess.run(["install", "-m", "0644", str(source), str(tree.drop / "root.pem")], check=True)
    # Well under BUSY_MAX_AGE (120 s): a held file would run this wait out.
    daemon.wait_synced(mark, status="1 CA trusted", timeout=60)
    assert sha(root) in trusted(tree)


def test_half_written_file_is_not_installed_until_closed(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    root, other = CA.root("Slow scp Root"), CA.root("Other Root")
    mark = daemon.mark()
    with open(tree.drop / "slow.pem", "wb") as handle:  # scp writes in place, like this
        # The file's creation makes a sync while it is still empty: it is skipped.
        daemon.wait_synced(mark, status="0 CAs trusted")
        # Its first write marks it busy. That mark arrives from the watcher's thread, in
        # order with the events after it: on an overloaded machine a write made before
        # the creation's sync can beat it there (see docs/ARCHITECTURE.md, "being written").
        handle.write(root.cert_pem[:300])
        handle.flush()
        # Another file arriving meanwhile must not make the daemon read the half file.
        shutil.copy(tree.root / "update-wrapper", tree.root / "x")  # unrelated activity
        mark = daemon.mark()
        (tree.drop / "other.pem").write_bytes(other.cert_pem)
        daemon.wait_synced(mark, status="1 CA trusted")
        assert sha(other) in trusted(tree)
        assert sha(root) not in trusted(tree)
        assert "slow.pem" not in daemon.log()  # not even rejected as truncated
        mark = daemon.mark()
        handle.write(root.cert_pem[300:])
    daemon.wait_synced(mark, status="2 CAs trusted")
    assert sha(root) in trusted(tree)


def test_editor_and_rsync_temp_names_are_ignored(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    root = CA.root("Temp Root")
    mark = daemon.mark()
    for name in (".root.pem.Xy12Ab", "root.pem~", "root.pem.swp", "root.pem.part"):
        (tree.drop / name).write_bytes(root.cert_pem)
    real = CA.root("Real Root")
    (tree.drop / "real.pem").write_bytes(real.cert_pem)
    daemon.wait_synced(mark, status="1 CA trusted")
    assert sha(real) in trusted(tree)
    assert sha(root) not in trusted(tree)


def test_burst_of_100_files_costs_at_most_two_updates(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    roots = [CA.root(f"Burst {i}") for i in range(100)]
    staging = tree.root / "staging"
    staging.mkdir()
    for i, root in enumerate(roots):
        (staging / f"r{i}.pem").write_bytes(root.cert_pem)
    mark = daemon.mark()
    for i in range(100):
        os.rename(staging / f"r{i}.pem", tree.drop / f"r{i}.pem")
    daemon.wait_synced(mark, status="100 CAs trusted")
    assert {sha(r) for r in roots} <= trusted(tree)
    assert tree.update_runs() <= 2


def test_start_with_nothing_changed_runs_no_update(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    tree.drop.mkdir(parents=True)
    (tree.drop / "root.pem").write_bytes(CA.root().cert_pem)
    assert tree.cli("sync").returncode == 0
    runs = tree.update_runs()
    daemon = start()
    assert daemon.wait_ready().fields["STATUS"].startswith("1 CA trusted")
    assert tree.update_runs() == runs


def test_update_failing_twice_then_succeeding_loses_nothing(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    counter = tree.root / "failures"
    flaky = tree.root / "flaky-update"
    flaky.write_text(
        "#!/bin/sh\n"
        f"n=$(cat '{counter}' 2>/dev/null || echo 0)\n"
        f"if [ \"$n\" -lt 2 ]; then echo $((n+1)) > '{counter}'; echo 'E: simulated' >&2; exit 1; fi\n"
        f"exec '{tree.root / 'update-wrapper'}' \"$@\"\n"
    )
    flaky.chmod(0o755)
    tree.write_config(trust_store__update_command=[str(flaky)], watch__retry_initial_seconds=0.3)
    daemon = start()
    root = CA.root("Flaky Root")
    mark = daemon.mark()
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    daemon.wait_synced(mark, status="degraded: flaky-update failed (exit 1)")
    daemon.wait_synced(mark, status="1 CA trusted")
    assert sha(root) in trusted(tree)
    assert counter.read_text().strip() == "2"
    assert (tree.drop / "root.pem").read_bytes() == root.cert_pem
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["daemon"]["state"] == "running" and status["last_sync"]["result"] == "ok"


def test_drop_dir_deleted_and_recreated_still_works(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    # Deleted once the main loop runs: its first WATCHDOG=1 comes after the selector
    # exists. Deleted in the instant between READY=1 and that, the daemon can die with
    # EINVAL from epoll_wait (a daemon bug, not this test's; most likely watchdog's emitter
    # closes the inotify fd on IN_DELETE_SELF, the re-watch closes that number again,
    # and by then it is the selector's epoll fd, created after READY=1).
    daemon = start(watchdog_usec=60_000_000)
    daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", what="the main loop's first WATCHDOG=1")
    mark = daemon.mark()
    shutil.rmtree(tree.drop)
    # The daemon notices, watches again and syncs. No CA came from the directory, so it
    # may create it again itself, empty.
    daemon.wait_synced(mark)
    tree.drop.mkdir(exist_ok=True)
    root = CA.root("After Recreate")
    staging = tree.root / "after.pem"
    staging.write_bytes(root.cert_pem)
    mark = daemon.mark()
    os.rename(staging, tree.drop / "after.pem")
    daemon.wait_synced(mark, status="1 CA trusted")
    assert sha(root) in trusted(tree)


def test_rejected_file_is_logged_once_and_listed_by_status(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    leaf = CA.root().issue_server("gw", ["gw"])
    mark = daemon.mark()
    (tree.drop / "leaf.pem").write_bytes(leaf.cert_pem)
    daemon.wait_synced(mark, status="1 file rejected")
    for i in range(3):  # more activity: the rejection must not be logged again
        mark = daemon.mark()
        (tree.drop / f"good{i}.pem").write_bytes(CA.root(f"Good {i}").cert_pem)
        daemon.wait_synced(mark, status=f"{i + 1} CA")
    assert len([line for line in daemon.log().splitlines() if "leaf.pem" in line]) == 1
    status = json.loads(tree.cli("status", "--json").stdout)
    assert [r["code"] for r in status["rejected"]] == ["not_ca"]
    assert (tree.drop / "leaf.pem").exists()


def test_expiring_ca_is_warned_about_at_start(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    tree.drop.mkdir(parents=True)
    (tree.drop / "soon.pem").write_bytes(pem(self_signed("Soon Root", not_after=now + dt.timedelta(days=5))))
    daemon = start()
    assert "expires in" in daemon.wait_ready().fields["STATUS"]
    assert "EDGE_CERTD_EVENT=expiring" in daemon.log()


def test_keyvault_dir_that_appears_later_is_watched(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    kv = tree.root / "kv"
    tree.write_config(keyvault_export_dirs=[str(kv)])
    daemon = start()
    mark = daemon.mark()
    kv.mkdir(mode=0o700)
    daemon.wait_synced(mark)  # it saw the directory appear, watches it and read it
    root = CA.root("Vault Root")
    mark = daemon.mark()
    (kv / "vault.cert").write_bytes(root.cert_pem + root.key_pem)
    daemon.wait_synced(mark, status="1 CA trusted")
    assert sha(root) in trusted(tree)


def test_bad_config_at_reload_keeps_the_old_one(tree: Tree, start) -> None:  # type: ignore[no-untyped-def]
    daemon = start()
    tree.config_path.write_text(tree.config_path.read_text() + "\nbogus_key: 1\n")
    mark = daemon.mark()
    daemon.signal(signal.SIGHUP)
    daemon.wait_ready(mark)
    assert "reload refused" in daemon.log() and "bogus_key" in daemon.log()
    root = CA.root("Still Working")
    mark = daemon.mark()
    (tree.drop / "r.pem").write_bytes(root.cert_pem)
    # STATUS= still names the refused configuration, so only the daemon's record changes.
    daemon.wait_synced(mark, check=lambda: sha(root) in trusted(tree))


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of another process, as the kernel may when it picks one."""
    numbers = {"x86_64": 234, "aarch64": 131, "riscv64": 131, "armv7l": 268}
    machine = os.uname().machine
    assert machine in numbers, f"no tgkill syscall number known for {machine}"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[machine], pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill {pid} {tid}")


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_signal_landing_on_a_watcher_thread_is_acted_on_at_once(tree: Tree, start, signum: int) -> None:  # type: ignore[no-untyped-def]
    # The kernel hands a process signal to any thread that does not block it. When it picks
    # one of watchdog's threads, the main loop's select() is not interrupted, and without
    # a wakeup fd the request waited for the next deadline (a rescan, minutes away).
    daemon = start()
    pid = daemon.pid
    main_tid = pid
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != main_tid]
    assert others, "the watcher threads are not running"
    # "At once" is against the next rescan, an hour away; the bound allows for a busy machine.
    if signum == signal.SIGHUP:
        mark = daemon.mark()
        _tgkill(pid, others[0], signum)
        daemon.wait_ready(mark)
    else:
        _tgkill(pid, others[-1], signum)
        assert daemon.proc.wait(120) == 0, daemon.log()
