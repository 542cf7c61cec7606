"""Booted Debian 12 and 13 containers for the end-to-end tests: cached roots, overlay, nsenter.

The root made by debootstrap is cached per release under /var/cache/edge-certd-e2e/ and never
booted itself: each run boots an overlayfs on top of it, so whatever the test does inside
(installing the package, purging it, adding users) disappears with the run's upper directory.
A root with extra packages (the unit suite's Python world) is cached as a copy of the plain
one with those installed by apt, so the plain root keeps edge-certd's dependencies out.

Run ``python3 tests/support/nspawn.py [RELEASE]`` as root to build the caches ahead of a run.
tests/e2e/conftest.py's `cached_root` fixture is how a test module gets a root to boot.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

CACHE_DIR = Path(os.environ.get("EDGE_CERTD_E2E_CACHE", "/var/cache/edge-certd-e2e"))
MIRROR = os.environ.get("EDGE_CERTD_E2E_MIRROR", "http://deb.debian.org/debian")
# The releases the package is tested on: Debian 12 and Debian 13.
RELEASES = ("bookworm", "trixie")
IN_CI = os.environ.get("CI") == "true"
# Root's tools (debootstrap, chroot) live in sbin, which a CI shell's PATH may not hold.
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What the cached root holds besides minbase. Everything here makes a run faster or is a tool
# the test drives; edge-certd's own Depends (python3-pydantic, python3-watchdog, ...) are kept
# OUT on purpose so that `apt-get install ./edge-certd_*.deb` has to pull them from the archive.
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "openssh-sftp-server",  # scp speaks SFTP by default since OpenSSH 9.0
    "openssh-client",
    "openssl",
    "ca-certificates",
    "python3",
    "nodejs",
    # ca-certificates-java installs the update-ca-certificates hook that writes
    # /etc/ssl/certs/java and /var/lib/ca-certificates-java: exactly the writes the unit's
    # sandbox has to allow, so the container must have it (and the JVM it runs).
    "ca-certificates-java",
    "procps",
)
# The JVM that hook runs, by release: Debian 13 has no OpenJDK 17 any more.
JRE = {"bookworm": "openjdk-17-jre-headless", "trixie": "openjdk-21-jre-headless"}

# The unit suite's world on a release's own packages (tests/run-all's apt list, less what
# builds the PyPI venv), and lintian to check the .deb with that release's rules.
SUITE_PACKAGES = (
    "python3-pytest",
    "python3-pytest-xdist",  # tests/unit-suite
    "python3-hypothesis",
    "python3-pydantic",
    "python3-cryptography",
    "python3-watchdog",
    "python3-systemd",
    "python3-yaml",
    "python3-prometheus-client",
    "python3-jsonschema",
    "prometheus",  # promtool
    "mosquitto",
    "inotify-tools",
    "strace",
    "dpkg-dev",  # dpkg-parsechangelog
    "lintian",
)


def include(release: str) -> tuple[str, ...]:
    """INCLUDE with the release's JVM, right after its hook (the order is in the cache key)."""
    i = INCLUDE.index("ca-certificates-java") + 1
    return (*INCLUDE[:i], JRE[release], *INCLUDE[i:])


def unavailable(reason: str) -> NoReturn:
    """Outside CI a missing prerequisite skips with its reason; in CI it fails."""
    import pytest

    if IN_CI:
        pytest.fail(f"cannot run: {reason}")
    pytest.skip(reason)


BOOT_TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "mount", "chroot")


def missing_for_boot() -> str | None:
    """Why this machine cannot boot the container, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, overlay mounts, systemd-nspawn)"
    missing = [t for t in BOOT_TOOLS if not shutil.which(t, path=SBIN_PATH)]
    if missing:
        return f"missing {', '.join(missing)}; install debootstrap and systemd-container"
    return None


def cache_key(release: str = "bookworm", extra: Sequence[str] = ()) -> str:
    """Name of the cached root: changes whenever what goes into it changes."""
    parts = (release, MIRROR, *include(release), *(("+", *extra) if extra else ()))
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{release}{'-plus' if extra else ''}-{digest[:12]}"


def _run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, **kwargs)


def ensure_cached_root(log: Path | None = None, release: str = "bookworm", extra: Sequence[str] = ()) -> Path:
    """Return the pristine cached root of `release`, building it first if it is missing.

    With `extra`, it is a copy of the plain root with those packages installed by apt. It is
    built in a temporary directory beside its final place and renamed only once complete, so
    an interrupted build is never mistaken for a cache.
    """
    key = cache_key(release, extra)
    root = CACHE_DIR / key
    if (root / "etc" / "os-release").exists():
        return root
    base = ensure_cached_root(log, release) if extra else None
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Leftovers of interrupted builds are never reused.
    for stale in CACHE_DIR.glob(f"{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=CACHE_DIR))
    out = open(log, "a") if log else None  # noqa: SIM115 - closed in finally
    try:
        if base is None:
            _debootstrap(release, tmp, out)
        else:
            _run(["cp", "-a", "--reflink=auto", f"{base}/.", str(tmp)])
            _apt_install_in_chroot(tmp, extra, out)
        tmp.chmod(0o755)
        try:
            tmp.rename(root)
        except OSError:
            # Another run finished the same cache first; use that one.
            if not (root / "etc" / "os-release").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if out:
            out.close()
    return root


def cached_root(log_dir: Path, release: str = "bookworm", extra: Sequence[str] = ()) -> Path:
    """The cached root of `release` (with `extra` installed), built first if missing.

    Where this machine cannot boot a container it skips, or fails in CI (`unavailable`).
    """
    reason = missing_for_boot()
    if reason:
        unavailable(reason)
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{SBIN_PATH}:{old_path}"  # debootstrap and chroot live in sbin
    try:
        return ensure_cached_root(log_dir / f"debootstrap-{cache_key(release, extra)}.log", release, extra)
    finally:
        os.environ["PATH"] = old_path


def _debootstrap(release: str, target: Path, out: IO[str] | None) -> None:
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(include(release))}",
            release,
            str(target),
            MIRROR,
        ],
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )
    # An empty machine-id makes systemd create one at boot (a fresh one each run).
    (target / "etc" / "machine-id").write_text("")
    # apt leaves nothing cached that a run would need; keep the image small.
    _run(["chroot", str(target), "apt-get", "clean"], stdout=out, stderr=out)


def _apt_install_in_chroot(target: Path, packages: Sequence[str], out: IO[str] | None) -> None:
    """apt-get install into an unbooted root: no systemd runs there, so no service starts."""
    resolv = target / "etc" / "resolv.conf"
    saved = resolv.read_bytes() if resolv.exists() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    proc = target / "proc"
    # Some maintainer scripts (the JVM's among them) read /proc.
    _run(["mount", "-t", "proc", "proc", str(proc)])
    try:
        env = {"PATH": SBIN_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            ["apt-get", "clean"],
        ):
            _run(
                ["chroot", str(target), *argv], stdout=out, stderr=subprocess.STDOUT if out else None, env=env
            )
    finally:
        subprocess.run(["umount", str(proc)], check=False)
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(FileNotFoundError):
        for task in task_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def _is_ns_init(pid: int) -> bool:
    """Whether `pid` is PID 1 of a nested PID namespace (/proc/PID/status's NSpid ends in 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
    return len(nspid) > 1 and nspid[-1] == "1"


class Container:
    """One booted systemd-nspawn container on an overlay of the cached root."""

    def __init__(self, lower: Path, workdir: Path) -> None:
        self.lower = lower
        self.workdir = workdir
        self.merged = workdir / "merged"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.mnt_ns = ""
        self.helpers: list[subprocess.Popen[str]] = []
        self.console_log = workdir / "console.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def boot(self, before_boot: Callable[[Path], None] | None = None, timeout: float = 300.0) -> None:
        """Mount the overlay, let before_boot(merged) edit the run's files, then boot."""
        for name in ("upper", "work", "merged"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                str(self.merged),
            ]
        )
        if before_boot is not None:
            before_boot(self.merged)
        console = open(self.console_log, "wb")  # noqa: SIM115 - kept open by nspawn
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(self.merged),
                "--boot",
                "--register=no",
                "--keep-unit",
                # No --private-network: apt inside must reach the archive, and the host has no
                # bridge to NAT a veth through. Services inside therefore share the host's
                # ports, so the test binds them to 127.0.0.1 on free ports.
                "--resolv-conf=replace-host",
                "--timezone=off",
                "--console=pipe",
                "--quiet",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n{self.console()}")
            # nspawn forks an outer child that exits once the container's PID 1 is forked:
            # the leader is the child that is PID 1 in a PID namespace of its own.
            kids = [k for k in _children(self.nspawn.pid) if _is_ns_init(k)]
            if kids:
                self.leader = kids[0]
                with contextlib.suppress(FileNotFoundError):
                    self.mnt_ns = os.readlink(f"/proc/{self.leader}/ns/mnt")
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"no container PID 1 after {timeout}s:\n{self.console()}")
        # Wait for the boot to settle: "running", or "degraded" when an unrelated unit failed.
        while time.monotonic() < deadline:
            r = self.run(["systemctl", "is-system-running"], check=False)
            if r.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"container did not finish booting:\n{self.console()}")

    def shutdown(self) -> None:
        """Stop the container and remove the run's overlay, however far boot() got."""
        for helper in self.helpers:
            if helper.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(helper.pid, signal.SIGKILL)
                helper.wait(timeout=10)
        if self.nspawn is not None and self.nspawn.poll() is None:
            # SIGTERM to nspawn asks the container's systemd to power off cleanly.
            self.nspawn.terminate()
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(timeout=10)
        if self.mnt_ns:
            # The kernel ends the container's PID namespace with its PID 1; anything still in
            # its mount namespace (which would keep the overlay busy) is killed by PID.
            for pid in self._container_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # Mounts nspawn made below merged/ go away with its mount namespace; ours is merged/.
        for _ in range(20):
            r = subprocess.run(["umount", str(self.merged)], capture_output=True, text=True)
            if r.returncode == 0 or "not mounted" in r.stderr:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "--lazy", str(self.merged)], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _container_pids(self) -> list[int]:
        """PIDs whose mount namespace is the container's (they outlive nspawn only by bugs)."""
        ns = self.mnt_ns
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "ns" / "mnt") == ns:
                        pids.append(int(proc.name))
        return pids

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- running things inside ---------------------------------------------------------------

    def _enter(self, argv: Sequence[str], user: str | None) -> list[str]:
        # `-a` enters every namespace of PID 1 (mount, pid, uts, ipc, cgroup, net: the host's)
        # and its root and working directory. env -i keeps the host's environment out.
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        if user is None:
            inner = [*env, "HOME=/root", *argv]
        else:
            inner = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--reset-env",
                     *argv]  # fmt: skip
        return ["nsenter", "-t", str(self.leader), "-a", *inner]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        user: str | None = None,
        input: str | None = None,
        timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container and capture its output."""
        cmd = list(argv)
        if env:
            cmd = ["env", *(f"{k}={v}" for k, v in env.items()), *cmd]
        r = subprocess.run(
            self._enter(cmd, user),
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"inside the container, {cmd!r} exited {r.returncode}\n"
                f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
            )
        return r

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start argv inside the container in the background (killed by shutdown())."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            self._enter(list(argv), None), text=True, start_new_session=True, **kwargs
        )
        self.helpers.append(proc)
        return proc

    def path(self, inside: str) -> Path:
        """Host path of a file inside the running container."""
        return self.merged / inside.lstrip("/")


def copy_checkout(repo: Path, dest: Path) -> None:
    """Copy what `make deb` would: the checkout's tracked and new-but-not-ignored files."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        unavailable("the source tree is not a git checkout")
    for rel in (f for f in r.stdout.split("\0") if f and (repo / f).exists()):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target, follow_symlinks=False)


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll `check` until it holds; the seconds that took. AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


def pem_fingerprints(pem_text: str) -> set[str]:
    """SHA-256 of every certificate in a PEM bundle, lowercase hex (the test's own reading,
    not edge-certd's)."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem_text, re.S)
    return {hashlib.sha256(base64.b64decode("".join(b.split()))).hexdigest() for b in blocks}


RUN_PREFIX = "edge-certd-e2e-run-"


def remove_stale_runs(max_age: float = 3600.0) -> None:
    """Remove run directories that a killed test run left behind (never a live one)."""
    for workdir in CACHE_DIR.glob(f"{RUN_PREFIX}*"):
        try:
            if time.time() - workdir.stat().st_mtime < max_age:
                continue  # may belong to a run still going on
        except FileNotFoundError:
            continue
        merged = workdir / "merged"
        if os.path.ismount(merged):
            subprocess.run(["umount", "--lazy", str(merged)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def booted(lower: Path, before_boot: Callable[[Path], None] | None = None) -> Iterator[Container]:
    """A container booted on an overlay of `lower`; stopped and removed on exit, always."""
    remove_stale_runs()
    workdir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=CACHE_DIR))
    c = Container(lower, workdir)
    try:
        c.boot(before_boot)
        yield c
    finally:
        c.shutdown()


if __name__ == "__main__":
    # python3 tests/support/nspawn.py [RELEASE [LOG]]: the release's plain root and its suite root.
    _release = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
    _log = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    print(ensure_cached_root(_log, _release))
    if _release != "bookworm":
        print(ensure_cached_root(_log, _release, SUITE_PACKAGES))
