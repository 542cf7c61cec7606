"""The clock and the judge worker, through the real daemon and the real sync.

- An installed root stays trusted when the device clock falls behind its notBefore.
- Setting the wall clock (as NTP does) makes the daemon judge every source again at once.
- While a file is being judged the daemon keeps pinging the watchdog and stops on SIGTERM
  without waiting for the judge.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.invariants import installed_cas
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints
from edge_certd.sync.engine import Engine


def _sha(ca: CA) -> str:
    import hashlib

    return hashlib.sha256(ca.der).hexdigest()


def _in_ca_dir(tree: Tree) -> set[str]:
    """Fingerprints of what ca_dir holds, valid or not by today's clock."""
    return {sha for path in tree.ca_dir.glob("*.crt") for sha in pem_fingerprints(path.read_bytes())}


def _judge_children(pid: int) -> list[int]:
    """The daemon's judge worker processes (its other children run commands briefly)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"edge_certd.worker.server" in cmdline:
                found.append(int(child))
    return found


def test_an_installed_root_stays_when_the_clock_falls_behind_its_not_before(tree: Tree) -> None:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    future = CA.root("Future Root", not_before=start)
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "future.pem").write_bytes(future.cert_pem)
    engine = Engine(tree.load())
    # The device's clock read a time after notBefore when the root arrived...
    installed = engine.sync(now=start + dt.timedelta(days=1))
    assert [ca.sha256 for ca in installed.added] == [_sha(future)]
    # ...and now reads a time before it (no RTC, NTP not answering yet).
    behind = engine.sync()
    assert _sha(future) in _in_ca_dir(tree), "a root was removed because the clock is behind"
    assert _sha(future) in pem_fingerprints(tree.system_bundle.read_bytes())
    assert not behind.removed and not behind.added
    assert "clock_behind" in [n.code for n in behind.notes]
    assert [r.code for r in behind.rejected] == ["not_yet_valid"]
    # A root that was never installed is not installed while the clock says it is early.
    other = CA.root("Other Future Root", not_before=start)
    (tree.drop / "other.pem").write_bytes(other.cert_pem)
    assert _sha(other) not in {ca.sha256 for ca in engine.sync().added}


# Serial: every daemon on the machine sees the clock set (timerfd's cancel-on-set), not only
# this test's, so no other test runs beside it.
@pytest.mark.serial
@pytest.mark.skipif(os.geteuid() != 0, reason="setting the clock needs CAP_SYS_TIME")
def test_setting_the_clock_makes_the_daemon_judge_again_at_once(tree: Tree) -> None:
    # A root that becomes valid in a few seconds, and a rescan far away: only the clock
    # watch can bring it in before the rescan.
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    root = CA.root("Soon Root", not_before=soon)
    tree.write_config(watch__rescan_interval=3600)
    tree.drop.mkdir(parents=True, exist_ok=True)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (tree.drop / "soon.pem").write_bytes(root.cert_pem)
        daemon.wait_synced(mark, status="1 file rejected")
        while dt.datetime.now(dt.UTC) <= soon:  # the root's own time must come first
            time.sleep(0.1)
        assert _sha(root) not in installed_cas(tree)
        # What NTP does, with no change of time: set the clock to what it reads.
        mark = daemon.mark()
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
        daemon.wait_synced(mark, status=lambda s: s.startswith("1 CA trusted"))
        assert _sha(root) in installed_cas(tree)
        assert "the system clock was set" in daemon.log()


def test_the_watchdog_is_fed_and_sigterm_is_answered_while_a_file_is_judged(tree: Tree) -> None:
    tree.write_config(policy__judge_cpu_seconds=5)  # a deadline of 17 s on the clock
    tree.drop.mkdir(parents=True, exist_ok=True)
    first, second = CA.root("First Judged"), CA.root("Second Judged")
    (tree.drop / "first.pem").write_bytes(first.cert_pem)
    with RunningDaemon(tree, watchdog_usec=1_000_000) as daemon:
        daemon.wait_ready()
        (worker,) = _judge_children(daemon.pid)  # the warm judge, started for first.pem
        os.kill(worker, signal.SIGSTOP)  # from now on it never answers
        try:
            mark = daemon.mark()
            (tree.drop / "second.pem").write_bytes(second.cert_pem)
            # Five pings after the drop, while the judge holds the sync: the loop is alive.
            enough = daemon.count("WATCHDOG=1") + 5
            daemon.wait_for(lambda _: daemon.count("WATCHDOG=1") >= enough, mark, what="five more WATCHDOG=1")
            assert _sha(second) not in installed_cas(tree), "the stopped judge answered?"
            sent = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.proc is not None and daemon.proc.wait(60) == 0
            took = time.monotonic() - sent
            # Structural: the daemon left long before the judge's 17 s deadline.
            assert took < 12, f"SIGTERM took {took:.1f} s while a file was judged\n{daemon.report()}"
            assert daemon.count("STOPPING=1") == 1
        finally:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
