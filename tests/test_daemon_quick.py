"""The daemon close to the floor (issue 24): a lone complete file is synced at once, a burst
still waits for the settle window, the judge is let go when idle and comes back, and the
idle daemon wakes no more often than its watchdog needs.

A real daemon, real inotify, a real NOTIFY_SOCKET and the real update-ca-certificates; the
judge is a real child process. Waits are for events (the end of a sync); the only timings
asserted are lower bounds, which hold however slow the machine is, or upper bounds far
below the settle window being tested.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints
from edge_certd.worker.pool import IDLE_SECONDS, JudgeWorker


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def _trusted(tree: Tree) -> set[str]:
    return pem_fingerprints(tree.edge_roots.read_bytes()) if tree.edge_roots.exists() else set()


@pytest.fixture
def daemon(tree: Tree, request: pytest.FixtureRequest) -> Iterator[RunningDaemon]:
    settle_ms, watchdog_usec = request.param
    tree.write_config(watch__settle_ms=settle_ms)
    with RunningDaemon(tree, watchdog_usec=watchdog_usec) as running:
        running.wait_ready()
        yield running


@pytest.mark.parametrize("daemon", [(30_000, None)], indirect=True)
def test_a_lone_file_renamed_in_is_trusted_without_waiting_for_the_settle_window(
    tree: Tree, daemon: RunningDaemon
) -> None:
    root = CA.root("Lone Root")
    staged = tree.root / "staged.pem"
    staged.write_bytes(root.cert_pem)
    mark = daemon.mark()
    start = time.monotonic()
    os.rename(staged, tree.drop / "root.pem")
    # A 30 s window is far past this deadline: only the quick path can meet it.
    daemon.wait_synced(mark, check=lambda: _sha(root) in _trusted(tree), timeout=20)
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("daemon", [(3_000, None)], indirect=True)
def test_a_file_arriving_while_another_is_written_waits_for_the_settle_window(
    tree: Tree, daemon: RunningDaemon
) -> None:
    writing, root = CA.root("Being Written"), CA.root("Burst Root")
    staged = tree.root / "staged.pem"
    staged.write_bytes(root.cert_pem)
    created = daemon.mark()
    with (tree.drop / "writing.pem").open("wb") as handle:
        handle.write(writing.cert_pem[:40])
        handle.flush()
        # Its creation makes a sync, which skips it (busy) or refuses the half; either way
        # the write was seen by then, and the file is busy until it is closed.
        daemon.wait_synced(created, timeout=60)
        mark = daemon.mark()
        start = time.monotonic()
        os.rename(staged, tree.drop / "root.pem")
        daemon.wait_synced(mark, check=lambda: _sha(root) in _trusted(tree), timeout=60)
        waited = time.monotonic() - start
    # Not synced until the window after the last event had passed.
    assert waited >= 3.0 - 0.05, f"synced after {waited:.2f} s, inside the 3 s settle window"
    assert _sha(writing) not in _trusted(tree), "a half-written file was trusted"


def test_an_idle_judge_is_let_go_and_the_next_request_starts_it_again(tree: Tree) -> None:
    worker = JudgeWorker(socket_path="")
    try:
        worker.warm_up()
        first = worker.server_pid
        assert first is not None
        deadline = worker.idle_deadline()
        assert deadline is not None
        worker.release_if_idle(deadline - 1)  # not idle long enough yet: kept
        assert worker.server_pid == first
        worker.release_if_idle(deadline + IDLE_SECONDS)
        assert worker.server_pid is None and worker.idle_deadline() is None
        with pytest.raises(ChildProcessError):
            os.waitpid(first, os.WNOHANG)  # reaped, not left a zombie
        worker.warm_up()
        assert worker.server_pid not in (None, first) and worker.spawned == 2
    finally:
        worker.close()


def _switches(pid: int) -> int:
    """Context switches of every thread of `pid` so far: a sleeping thread makes none."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended
    return total


def _quiet_window(pid: int, *, seconds: float, within: float) -> float | None:
    """When `pid` first made no context switch for `seconds`, or None if it never did
    within `within` seconds. Start-up work still running on a busy machine (the start-up
    sync's tail, the first status writes) only moves the window later; a periodic wake-up
    shorter than `seconds` never lets it close."""
    deadline = time.monotonic() + within
    quiet_since, count = time.monotonic(), _switches(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)  # sampling the counters, not waiting for an event
        now, latest = time.monotonic(), _switches(pid)
        if latest != count:
            quiet_since, count = now, latest
        elif now - quiet_since >= seconds:
            return now
    return None


@pytest.mark.parametrize("daemon", [(100, 60_000_000)], indirect=True)
def test_an_idle_daemon_under_the_watchdog_does_not_wake_between_pings(daemon: RunningDaemon) -> None:
    # WatchdogSec=60 s, as shipped: a ping every 30 s; the judge is let go 30 s after the
    # start-up sync. In between, no thread of the daemon runs at all: a 4 s window with no
    # context switch comes, which a wake-up every second (the monitor outside the watchdog,
    # below) never allows.
    daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", what="the first WATCHDOG=1")
    quiet = _quiet_window(daemon.pid, seconds=4, within=120)
    assert quiet is not None, "a thread of the idle daemon kept waking"


@pytest.mark.parametrize("daemon", [(100, None)], indirect=True)
def test_without_the_watchdog_the_monitor_still_looks_every_second(daemon: RunningDaemon) -> None:
    # The other side: outside systemd's watchdog the watcher's monitor keeps its 1 s looks
    # (a lost watch is found at once), so no 4 s window is quiet.
    assert _quiet_window(daemon.pid, seconds=4, within=12) is None
