"""SIGKILL `edge-certd sync` and `edge-certd run` at >= 100 points; every restart recovers.

How the kills are placed, with no hook in the product:
- Syscall points come from strace. A traced dry run of the same transition lists every
  write, fsync, rename and unlink edge-certd's main thread makes, with the file each one
  touches (`strace -y`). Each one under the tree becomes a kill point, and the kill run
  is the same command with `strace -e inject=<syscall>:signal=KILL:when=<n>` attached:
  the kernel kills the process as it enters that syscall. "Mid write" is the write() or
  fsync() of a temp file, "before the rename" its rename(), "after the .crt is written
  and before the update" the fsync of ca_dir that follows the last rename.
- strace attaches (-p) while the process waits for the state lock, which the test holds:
  imports and config loading are done by then, so they cost no ptrace stops (tracing a
  whole start-up made each run about a second slower), and counting starts at the same
  moment in the dry run and the kill run. Accounting is per syscall and per tracee
  (strace(1), --inject) and -p without -f follows only the main thread, so the n-th call
  is the same call in both runs, and the update command's processes are never traced.
- The update command is killed from outside: a wrapper around the real
  update-ca-certificates writes its pid, then either holds (a kill before the tool does
  anything) or runs the tool (a kill at spread offsets inside it) and holds after it, so
  a kill that a busy machine delays still lands inside the update command. The test then
  SIGKILLs edge-certd and the wrapper's process group, as systemd would kill the unit's
  cgroup.

After each kill, `check_mid_crash` looks at the tree as the crash left it, then a
restart (a sync, or the daemon) runs and `check_settled` proves the invariants.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon, wait_until
from support.invariants import check_mid_crash, check_settled, fingerprints
from support.tree import Tree, make_tree, require_tool

from edge_certd.sync.engine import Engine

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACED = ("write", "fsync", "rename", "unlink")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+= ")
_PATHS = re.compile(r'"([^"]*)"|<(/[^>]*)>')


@dataclass(frozen=True)
class KillPoint:
    syscall: str
    nth: int
    label: str  # what the process was about to do, e.g. "rename ca_dir/.edge-certd-…tmp"
    family: str  # crt, removal, bundle, java, manifest, pending, status

    def strace_args(self) -> list[str]:
        return [
            "-o",
            "/dev/null",
            "-e",
            f"trace={self.syscall}",
            "-e",
            f"inject={self.syscall}:signal=KILL:when={self.nth}",
        ]


@dataclass
class Scene:
    """A device tree and two source states to move between."""

    tree: Tree
    cas: dict[str, CA]
    roots: set[str]
    ctl: Path

    def state_files(self, which: int) -> dict[str, bytes]:
        a, b, c, d = (self.cas[k] for k in "abcd")
        if which == 1:
            return {"a.pem": a.cert_pem, "b.pem": b.cert_pem}
        return {"a.pem": a.cert_pem, "c.pem": c.cert_pem, "d.der": d.der}

    def shas(self, which: int) -> set[str]:
        return {_sha(self.cas[name[0]]) for name in self.state_files(which)}

    def set_sources(self, which: int) -> None:
        """Make the drop directory hold state `which`, each file appearing whole."""
        files = self.state_files(which)
        for existing in self.tree.drop.iterdir():
            if existing.name not in files:
                existing.unlink()
        for name, data in files.items():
            path = self.tree.drop / name
            if not path.exists():
                temp = self.tree.drop / f".{name}.part"
                temp.write_bytes(data)
                temp.rename(path)

    def sync_in_process(self) -> None:
        Engine(self.tree.load()).sync()


def _sha(ca: CA) -> str:
    import hashlib

    return hashlib.sha256(ca.der).hexdigest()


def _env() -> dict[str, str]:
    # No .pyc writes: they would add write() calls that the dry run may not have seen.
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "EDGE_CERTD_LOG": "stderr"}


DRY_RUN = ["-y", "-e", "trace=" + ",".join((*TRACED, "sendmsg"))]


@contextlib.contextmanager
def lock_held(tree: Tree) -> Iterator[None]:
    """Hold edge-certd's state lock: a sync started meanwhile waits for it, imports done."""
    fd = os.open(tree.state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def attach(tree: Tree, pid: int, args: list[str]) -> subprocess.Popen[bytes]:
    """strace -p `pid` once it waits for the lock; returns when the trace is in place."""
    lock = str(tree.state / "lock")

    def waiting() -> bool:
        try:
            return any(os.readlink(f"/proc/{pid}/fd/{fd}") == lock for fd in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return False

    wait_until(waiting, 120, "edge-certd to wait for the state lock", interval=0.01)
    tracer = subprocess.Popen(
        ["strace", "-p", str(pid), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: _tracer_of(pid) == tracer.pid, 120, "strace to attach", interval=0.01)
    return tracer


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _sync_traced(scene: Scene, args: list[str]) -> tuple[int, str]:
    """`edge-certd sync` with strace attached at the lock: (exit code, stderr)."""
    argv = [sys.executable, "-m", "edge_certd", "--config", str(scene.tree.config_path), "sync"]
    with lock_held(scene.tree):
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=REPO_ROOT
        )
        tracer = attach(scene.tree, proc.pid, args)
    _, err = proc.communicate(timeout=120)
    tracer.wait(30)
    return proc.returncode, err.decode(errors="replace")


def classify(
    log: Path, tree: Tree, stop_at_notify: int | None = None, start_at_notify: int = 0
) -> list[KillPoint]:
    """Kill points from a dry-run strace log: every traced call on a file under the tree.

    `start_at_notify` / `stop_at_notify` keep only the calls between the n-th and m-th
    sd_notify message (sendmsg), to tell the daemon's start-up sync from a later one.
    """
    counts: Counter[str] = Counter()
    points = []
    notifies = 0
    root = str(tree.root)
    for line in log.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if not match:
            continue
        name, args = match.groups()
        if name == "sendmsg":
            notifies += 1
            continue
        counts[name] += 1
        if notifies < start_at_notify or (stop_at_notify is not None and notifies >= stop_at_notify):
            continue
        paths = [a or b for a, b in _PATHS.findall(args)]
        ours = [p for p in paths if p.startswith(root)]
        if not ours:
            continue
        target = ours[-1]
        family = _family(name, target, tree)
        if os.path.isdir(target) and points:
            family = points[-1].family  # the directory fsync that makes a rename durable
        points.append(KillPoint(name, counts[name], f"{name} {_short(target, tree)}", family))
    return points


def _short(path: str, tree: Tree) -> str:
    return os.path.relpath(path, tree.root)


def _family(name: str, path: str, tree: Tree) -> str:
    base = os.path.basename(path)
    if path.startswith(str(tree.ca_dir)):
        return "removal" if name == "unlink" else "crt"
    if "java" in base:
        return "java"
    if path.startswith(str(tree.bundles)) or path.startswith(str(tree.env_file.parent)):
        return "bundle"
    for family in ("manifest", "pending", "status", "verdict-cache"):
        if family in base:
            return family
    return "other"


def _dry_run_sync(scene: Scene, which: int) -> list[KillPoint]:
    log = scene.tree.root / f"dry-sync-{which}.strace"
    scene.set_sources(which)
    code, err = _sync_traced(scene, ["-o", str(log), *DRY_RUN])
    assert code == 0, err
    check_settled(scene.tree, scene.shas(which), scene.roots)
    return classify(log, scene.tree)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    require_tool("update-ca-certificates")
    require_tool("strace")
    tree = make_tree(tmp_path / "device", mozilla_count=2, java="jks")
    ctl = tree.root / "crash-ctl"
    ctl.mkdir()
    wrapper = tree.root / "crash-wrapper"
    # When armed: record our pid (we lead our own process group, start_new_session), then
    # hold before the real tool, or run it while the test kills at an offset. After the tool
    # the command holds too, not returning: on a busy machine the kill can land later than
    # the tool's run, and it must still land inside the update command, never after a sync
    # that went on to finish.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{ctl}/armed" ]; then\n'
        f'  echo $$ > "{ctl}/pid.tmp" && mv "{ctl}/pid.tmp" "{ctl}/pid"\n'
        f'  if [ -e "{ctl}/hold" ]; then sleep 600; fi\n'
        f'  "{tree.root}/update-wrapper" "$@"\n'
        "  sleep 600\n"
        "fi\n"
        f'exec "{tree.root}/update-wrapper" "$@"\n'
    )
    wrapper.chmod(0o755)
    tree.write_config(trust_store__update_command=[str(wrapper)])
    roots = fingerprints(tree.system_bundle)
    cas = {k: CA.root(f"Crash {k.upper()}") for k in "abcd"}
    tree.drop.mkdir(parents=True, exist_ok=True)
    s = Scene(tree, cas, roots, ctl)
    s.set_sources(1)
    s.sync_in_process()
    check_settled(tree, s.shas(1), roots)
    yield s


def _kill_sync_at(scene: Scene, point: KillPoint, src: int, dst: int) -> None:
    scene.set_sources(dst)
    code, err = _sync_traced(scene, point.strace_args())
    assert code == -signal.SIGKILL, (
        f"{point.label} (#{point.nth}) was not reached: exit {code}\n{err[-2000:]}"
    )
    check_mid_crash(scene.tree, scene.shas(src), scene.shas(dst), scene.roots)
    scene.sync_in_process()  # the restart
    check_settled(scene.tree, scene.shas(dst), scene.roots)


def test_sigkill_of_sync_at_every_write_fsync_rename_unlink(scene: Scene) -> None:
    forward = _dry_run_sync(scene, 2)  # state 1 → 2: adds C and D, removes B
    backward = _dry_run_sync(scene, 1)  # state 2 → 1: adds B, removes C and D
    # 73 today; docs/RELIABILITY.md adds these to the update and daemon kills for >= 100.
    assert len(forward) + len(backward) >= 60, "the scene no longer reaches enough points"
    families = Counter(p.family for p in forward + backward)
    for family in ("crt", "removal", "bundle", "java", "manifest", "pending", "status"):
        assert families[family], f"no kill point in {family}: {families}"
    for i in range(max(len(forward), len(backward))):
        if i < len(forward):
            _kill_sync_at(scene, forward[i], 1, 2)
        else:
            scene.set_sources(2)
            scene.sync_in_process()
        if i < len(backward):
            _kill_sync_at(scene, backward[i], 2, 1)
        else:
            scene.set_sources(1)
            scene.sync_in_process()
    _report("sync", forward + backward)


def _kill_during_update(
    scene: Scene, start: list[str], src: int, dst: int, hold: bool, offset: float
) -> None:
    """Start edge-certd, wait until it runs the update command, then kill it all."""
    (scene.ctl / "armed").touch()
    if hold:
        (scene.ctl / "hold").touch()
    pid_file = scene.ctl / "pid"
    scene.set_sources(dst)
    proc = subprocess.Popen(
        start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO_ROOT
    )
    try:
        wait_until(pid_file.exists, 120, "the update command to start")
        time.sleep(offset)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        # The wrapper holds until killed, so its group is there to kill: as systemd kills
        # the unit's cgroup.
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        for name in ("armed", "hold", "pid"):
            (scene.ctl / name).unlink(missing_ok=True)
    assert proc.returncode == -signal.SIGKILL
    check_mid_crash(scene.tree, scene.shas(src), scene.shas(dst), scene.roots)


# Seconds between the wrapper starting the real update-ca-certificates and the kill;
# the tool takes about 0.05-0.15 s on these small trees, so they spread over its run.
UPDATE_OFFSETS = (0.0, 0.015, 0.03, 0.06)


def test_sigkill_of_sync_during_the_update_command(scene: Scene) -> None:
    argv = [sys.executable, "-m", "edge_certd", "--config", str(scene.tree.config_path), "sync"]
    kills = 0
    for hold in (True, False):
        for offset in UPDATE_OFFSETS if not hold else (0.0, 0.05):
            for src, dst in ((1, 2), (2, 1)):
                _kill_during_update(scene, argv, src, dst, hold, offset)
                scene.sync_in_process()
                check_settled(scene.tree, scene.shas(dst), scene.roots)
                kills += 1
    print(f"\nkill points, sync during the update command: {kills}")


def _dry_run_daemon(scene: Scene, which: int) -> list[KillPoint]:
    """Points of the daemon's start-up sync (state 1 → `which`), up to READY=1."""
    log = scene.tree.root / f"dry-daemon-{which}.strace"
    scene.set_sources(which)
    daemon, tracer = _daemon_traced(scene, ["-o", str(log), *DRY_RUN])
    with daemon:
        daemon.wait_ready()
    tracer.wait(30)
    check_settled(scene.tree, scene.shas(which), scene.roots)
    return classify(log, scene.tree, stop_at_notify=1)


def _daemon_traced(scene: Scene, args: list[str]) -> tuple[RunningDaemon, subprocess.Popen[bytes]]:
    """`edge-certd run` with strace attached as its start-up sync waits for the lock."""
    with lock_held(scene.tree):
        daemon = RunningDaemon(scene.tree)
        try:
            tracer = attach(scene.tree, daemon.pid, args)
        except BaseException:
            daemon.stop()
            raise
    return daemon, tracer


def _restart_daemon_and_check(scene: Scene, expected: int) -> None:
    with RunningDaemon(scene.tree) as daemon:
        daemon.wait_ready()
        assert daemon.alive
    # Checked once it stopped: right after READY=1 it is still recording itself in
    # status.json, whose temp file is then legitimately there.
    assert daemon.proc.returncode == 0, daemon.log()
    check_settled(scene.tree, scene.shas(expected), scene.roots)


def test_sigkill_of_the_daemon_during_its_sync(scene: Scene) -> None:
    everything = _dry_run_daemon(scene, 2)
    scene.set_sources(1)
    scene.sync_in_process()
    assert {p.family for p in everything} >= {"crt", "removal", "bundle", "manifest"}
    # The sync test above kills at every point of the same work; here every third one
    # (and the first of each family) proves the daemon's own start-up recovers, within
    # the time budget.
    firsts = {p.family: p for p in reversed(everything)}.values()
    points = sorted(set(everything[::3]) | set(firsts), key=everything.index)
    assert len(points) >= 15, "the daemon's start-up sync no longer reaches enough points"
    for point in points:
        scene.set_sources(2)
        daemon, tracer = _daemon_traced(scene, point.strace_args())
        with daemon:
            daemon.proc.wait(60)
            tracer.wait(30)
            assert daemon.proc.returncode == -signal.SIGKILL, (
                f"{point.label} (#{point.nth}) was not reached\n{daemon.log()}"
            )
        check_mid_crash(scene.tree, scene.shas(1), scene.shas(2), scene.roots)
        _restart_daemon_and_check(scene, 2)
        scene.set_sources(1)
        scene.sync_in_process()
        check_settled(scene.tree, scene.shas(1), scene.roots)
    # The update command, held and mid-run, under the daemon too.
    argv = [sys.executable, "-m", "edge_certd", "--config", str(scene.tree.config_path), "run"]
    update_kills = 0
    for hold, offset in ((True, 0.0), (False, 0.0), (False, 0.03), (False, 0.06)):
        _kill_during_update(scene, argv, 1, 2, hold, offset)
        _restart_daemon_and_check(scene, 2)
        scene.set_sources(1)
        scene.sync_in_process()
        update_kills += 1
    _report("daemon", points, extra=update_kills)


def _report(what: str, points: list[KillPoint], extra: int = 0) -> None:
    families = Counter(p.family for p in points)
    print(
        f"\nkill points, {what}: {len(points) + extra} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(families.items()))}"
        + (f", update command {extra}" if extra else "")
        + ")"
    )
