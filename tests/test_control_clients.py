"""No client can hold or crash the daemon: clients are served off its loop, each request has
one deadline, bad requests are answered and logged once, root is never starved, and a busy
daemon gets a clear message and a retry from the CLI. Real daemon, real sockets, real users.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import Mark, RunningDaemon, wait_until
from support.tree import Tree

from edge_certd.cli import client
from edge_certd.core import wire
from edge_certd.core.pem import pem_fingerprints
from edge_certd.daemon import control

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 60.0  # any wait for the daemon, on a loaded two-core machine


def _socket_path(tree: Tree) -> str:
    return str(tree.config()["control_socket"])


def _connect(tree: Tree) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(_socket_path(tree))
    return sock


def _answer(sock: socket.socket) -> dict[str, object]:
    reader = wire.FrameReader(1 << 20)
    while (payload := reader.pop()) is None:
        chunk = sock.recv(1 << 16)
        assert chunk, "the daemon closed the connection without an answer"
        reader.feed(chunk)
    return wire.decode_object(payload)


def _raw(tree: Tree, data: bytes, fds: list[int] | None = None) -> dict[str, object]:
    with _connect(tree) as sock:
        socket.send_fds(sock, [data], fds or [])
        return _answer(sock)


def _ask_sync(tree: Tree) -> dict[str, object]:
    return client.ask(_socket_path(tree), "sync", {})


class _Trickler(threading.Thread):
    """A group member's slow client: a length, then one byte every 0.5 s, again and again."""

    def __init__(self, tree: Tree) -> None:
        super().__init__(daemon=True)
        self.tree, self.stop, self.bytes_sent, self.cut_off = tree, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError), _connect(self.tree) as sock:
                sock.sendall(wire.frame(b"x" * 1000)[:4])
                while not self.stop.wait(0.5):
                    sock.sendall(b"{")
                    self.bytes_sent += 1
            self.cut_off += 1


def test_a_slow_client_holds_neither_the_watchdog_nor_syncs_nor_remove_nor_sigterm(
    tree: Tree, tmp_path: Path
) -> None:
    root = CA.root("Slow Client Root")
    with RunningDaemon(tree, watchdog_usec=2_000_000) as daemon:
        daemon.wait_ready()
        trickler = _Trickler(tree)
        trickler.start()
        try:
            wait_until(lambda: trickler.bytes_sent >= 2, DEADLINE, "the slow client under way")
            # WATCHDOG=1 every second (half of WATCHDOG_USEC) goes on: three in a row.
            mark = daemon.mark()
            for _ in range(3):
                notice = daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", mark, DEADLINE, "WATCHDOG=1")
                mark = Mark(notice.index + 1, None)
            # A drop is synced.
            mark = daemon.mark()
            (tree.drop / "root.pem").write_bytes(root.cert_pem)
            daemon.wait_synced(mark, status="1 CA trusted")
            # Root's remove is answered.
            removed = tree.cli("remove", _sha(root)[:16])
            assert removed.returncode == 0, removed.stdout + removed.stderr
            assert trickler.is_alive() and trickler.bytes_sent >= 4
            # SIGTERM ends the daemon promptly, the slow client still sending.
            started = time.monotonic()
            code = daemon.stop(timeout=30)
            assert code == 0, daemon.report()
            assert time.monotonic() - started < 30
        finally:
            trickler.stop.set()
            trickler.join(10)


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def _trusted(tree: Tree) -> set[str]:
    return pem_fingerprints(tree.edge_roots.read_bytes()) if tree.edge_roots.exists() else set()


def test_a_client_that_never_sends_is_answered_at_the_request_deadline(tree: Tree) -> None:
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        with _connect(tree) as silent:
            started = time.monotonic()
            reply = _answer(silent)
            waited = time.monotonic() - started
        assert reply["error"] == {
            "kind": "usage",
            "message": f"bad request: not sent whole within {control.REQUEST_DEADLINE:.0f} s",
        }
        assert control.REQUEST_DEADLINE - 1 <= waited < control.REQUEST_DEADLINE + DEADLINE
        assert "error" not in _ask_sync(tree)


def test_idle_connections_do_not_delay_roots_answer(tree: Tree) -> None:
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        idle = [_connect(tree) for _ in range(20)]
        try:
            idle[0].sendall(wire.frame(b"{")[:3])  # one even half-way through its header
            started = time.monotonic()
            reply = _ask_sync(tree)
            elapsed = time.monotonic() - started
            assert "error" not in reply, reply
            # Answered while every idle connection is still open: root did not queue behind them.
            for sock in idle:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            assert elapsed < control.REQUEST_DEADLINE, elapsed
        finally:
            for sock in idle:
                sock.close()


_MEMBER_SCRIPT = r"""
import select, socket, sys
from edge_certd.cli import client
path, count = sys.argv[1], int(sys.argv[2])
idle = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    idle.append(s)
reply = client.ask(path, "sync", {})
print("answered" if "error" not in reply else "error " + str(reply["error"]))
closed = 0
for s in idle:
    if select.select([s], [], [], 5)[0] and s.recv(1) == b"":
        closed += 1
print("closed", closed)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a group member's connections need another user")
def test_group_members_share_a_few_connections_and_the_oldest_idle_gives_way(tree: Tree) -> None:
    tree.write_config(sources__trusted_group="nogroup")  # nobody's group stands in for edge-certd
    Path(_socket_path(tree)).parent.chmod(0o755)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        count = control.MAX_GROUP_CONNECTIONS + 4
        member = subprocess.Popen(
            ["/usr/bin/python3", "-c", _MEMBER_SCRIPT, _socket_path(tree), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
            user="nobody",
            group="nogroup",
            env={"PATH": "/usr/bin:/bin", "HOME": "/"},
        )
        try:
            # Root is served whatever the member's connections do.
            assert "error" not in _ask_sync(tree)
            out, err = member.communicate(timeout=DEADLINE)
        finally:
            if member.poll() is None:
                member.kill()
        assert member.returncode == 0, err
        assert "answered" in out, out + err
        closed = int(out.split("closed")[1])
        # The oldest idle ones gave way: 4 for the share, 1 for the member's own sync.
        assert closed >= count - control.MAX_GROUP_CONNECTIONS, out


def _fill_backlog(path: str) -> list[socket.socket]:
    filler = []
    for _ in range(4096):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return filler
        filler.append(sock)
    raise AssertionError("the backlog never filled")


def _stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped (a signal is delivered to each in its turn)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state == "T" for state in states)


def test_a_full_backlog_gives_the_cli_a_clear_message_and_a_retry(tree: Tree) -> None:
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        daemon.signal(signal.SIGSTOP)  # accepts nothing, so the kernel's queue fills
        wait_until(lambda: _stopped(daemon.pid), DEADLINE, "every thread of the daemon stopped")
        filler: list[socket.socket] = []
        try:
            filler = _fill_backlog(_socket_path(tree))
            # Gives up with a message, not a traceback.
            busy = tree.cli("sync")
            assert busy.returncode == 2, busy.stdout + busy.stderr
            assert "busy" in busy.stderr and "queue of connections is full" in busy.stderr, busy.stderr
            assert "Traceback" not in busy.stderr
            # Asks again, and is served once the daemon takes connections again.
            waiting = subprocess.Popen(
                [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), "sync"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(REPO),
                env={**os.environ, "EDGE_CERTD_LOG": "stderr"},
            )
            assert waiting.stderr is not None
            first = waiting.stderr.readline()
            assert "asking again" in first, first
        finally:
            daemon.signal(signal.SIGCONT)
        out, err = waiting.communicate(timeout=DEADLINE)
        for sock in filler:
            sock.close()
        assert waiting.returncode == 0, out + err
        assert "Traceback" not in err
        assert daemon.alive


HOSTILE = {
    "60 KB of [": wire.frame(b"[" * 60_000),
    "a header announcing 4 GB": b"\xff\xff\xff\xff" + b"{" * 100,
    "not JSON": wire.frame(b"\xff\xfe not json"),
    "not an object": wire.frame(b'["op", "sync"]'),
    "an op that is not a string": wire.frame(b'{"op": 1}'),
    "an unknown op": wire.frame(b'{"op": "format-disk"}'),
    "two requests in one connection": wire.frame(b'{"op":"sync"}', b'{"op":"sync"}'),
}


def test_hostile_requests_are_answered_bad_request_and_the_daemon_serves_the_next(
    tree: Tree, tmp_path: Path
) -> None:
    pem = tmp_path / "root.pem"
    pem.write_bytes(CA.root("Passed Root").cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        for what, data in HOSTILE.items():
            reply = _raw(tree, data)
            error = reply.get("error")
            assert isinstance(error, dict) and error["kind"] == "usage", (what, reply)
            assert daemon.alive, what
            assert "error" not in _ask_sync(tree), what
        # Descriptors passed with another request than add.
        fd = os.open(pem, os.O_RDONLY)
        try:
            reply = _raw(tree, wire.frame(wire.encode({"op": "sync", "names": ["root.pem"]})), [fd])
        finally:
            os.close(fd)
        assert reply["error"] == {"kind": "usage", "message": "bad request: only add sends files, not sync"}
        # A client that goes before its answer.
        with _connect(tree) as gone:
            gone.sendall(wire.frame(wire.encode({"op": "sync"})))
        assert "error" not in _ask_sync(tree)
        assert daemon.alive
        # The 60 KB of "[" was logged once, as one refused request.
        log = daemon.log()
        assert log.count("nests deeper than") == 1, log[-3000:]
        assert "Traceback" not in log


def test_a_hundred_clients_at_once_are_all_answered(tree: Tree) -> None:
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        replies: list[object] = []

        def one() -> None:
            try:
                replies.append(_ask_sync(tree))
            except Exception as exc:  # noqa: BLE001 - counted below
                replies.append(exc)

        threads = [threading.Thread(target=one) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE * 2)
        assert len(replies) == 100
        assert all(isinstance(r, dict) and "error" not in r for r in replies), [
            r for r in replies if not isinstance(r, dict) or "error" in r
        ][:3]
        assert daemon.alive


_FAULT = """
import edge_certd.sync.operations as operations

def remove(*args, **kwargs):
    raise RuntimeError("injected fault in a handler")

operations.remove = remove
"""


def test_an_exception_in_a_handler_is_answered_and_logged_once(tree: Tree, tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(_FAULT)
    with RunningDaemon(tree, env={"PYTHONPATH": f"{faults}:{REPO}"}) as daemon:
        daemon.wait_ready()
        failed = tree.cli("remove", "abcdef012345")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "internal error (RuntimeError)" in failed.stderr and "journalctl" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert daemon.alive
        done = tree.cli("sync")
        assert done.returncode == 0, done.stdout + done.stderr
        log = daemon.log()  # one event, its traceback included
        assert log.count("internal error while serving `edge-certd remove`") == 1, log[-3000:]
        assert log.count("EDGE_CERTD_EVENT=control") == 1, log[-3000:]


def _add_named(tree: Tree, pem: Path, name: str) -> dict[str, object]:
    fd = os.open(pem, os.O_RDONLY)
    try:
        return _raw(tree, wire.frame(wire.encode({"op": "add", "args": {}, "names": [name]})), [fd])
    finally:
        os.close(fd)


def test_a_5000_character_name_is_bounded_and_the_daemon_stays_well(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Long Name Root")
    pem = tmp_path / "root.pem"
    pem.write_bytes(root.cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        # Longer than any path (PATH_MAX): refused as a bad request, nothing written.
        refused = _add_named(tree, pem, "n" * 5000 + ".pem")
        assert refused["error"] == {
            "kind": "usage",
            "message": "bad request: every file needs a name (a path, at most 4096)",
        }
        assert list(tree.drop.iterdir()) == [] if tree.drop.exists() else True
        # As long as a path may be, with escapes in it: added, every output bounded.
        reply = _add_named(tree, pem, "\x1b[31m" + "n" * 4000 + "\n.pem")
        assert "error" not in reply, reply
        text = str(reply["text"])
        assert "trusts CN=Long Name Root" in text
        assert "\x1b" not in text and "\n." not in text and len(text) < 2000, text
        (dropped,) = [p.name for p in tree.drop.iterdir()]
        assert len(dropped.encode()) <= 255 and dropped.endswith(".pem"), dropped
        assert "degraded" not in daemon.last_status(), daemon.report()
        assert daemon.record().get("degraded") is None
        # A NAME that long for remove is refused, in a bounded message.
        too_long = tree.cli("remove", "x" * 5000)
        assert too_long.returncode == 2 and len(too_long.stderr) < 500, too_long.stderr
        assert daemon.record().get("degraded") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="running the CLI as another user needs root")
def test_reload_reports_a_refused_configuration_and_keeps_the_old_one(tree: Tree) -> None:
    root = CA.root("Reload Root")
    tree.write_config(sources__trusted_group="nogroup")  # nobody's group stands in for edge-certd
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        good = tree.config_path.read_text()
        tree.config_path.write_text(good + "\nno_such_key: 1\n")
        refused = tree.cli("reload")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refused" in refused.stderr and "no_such_key" in refused.stderr, refused.stderr
        daemon.wait_status("configuration refused at reload")
        assert "reload refused" in daemon.log()
        # The previous configuration runs: a drop is still trusted.
        mark = daemon.mark()
        (tree.drop / "root.pem").write_bytes(root.cert_pem)
        daemon.wait_synced(mark, check=lambda: _sha(root) in _trusted(tree))
        tree.config_path.write_text(good)
        mark = daemon.mark()
        done = tree.cli("reload")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "configuration reloaded" in done.stdout
        daemon.wait_status(lambda line: "refused" not in line, mark)
        # Only root may ask for it, not even a member of the group.
        Path(_socket_path(tree)).parent.chmod(0o755)
        member = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                "from edge_certd.cli import client; import sys; print(client.ask(sys.argv[1], 'reload', {}))",
                _socket_path(tree),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            cwd=str(REPO),
            user="nobody",
            group="nogroup",
            env={"PATH": "/usr/bin:/bin", "HOME": "/"},
            timeout=DEADLINE,
            check=False,
        )
        assert "needs root" in member.stdout, member.stdout + member.stderr


def test_reload_without_a_daemon_fails(tree: Tree) -> None:
    alone = tree.cli("reload")
    assert alone.returncode == 1 and "not running" in alone.stderr, alone.stderr
