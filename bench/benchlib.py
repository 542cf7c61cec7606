"""What every benchmark shares: a full-size device tree, the daemon under a real
NOTIFY_SOCKET, bare update-ca-certificates runs, trust probes and the final JSON line.

Timings on a shared machine drift, so every script compares figures taken in the same run
(a drop against a bare update run on the same tree, a minute apart at most). Nothing here
touches the host's trust store: every path is under a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _extra in (REPO, REPO / "tests"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

# The test suite's tree and CA helpers, so the bench measures the layout the tests prove.
from certs import CA  # noqa: E402
from conftest import MOZILLA_DIR, Tree, make_tree  # noqa: E402

from edge_certd.config import WatchConfig  # noqa: E402
from edge_certd.core.pem import pem_fingerprints  # noqa: E402

# A quick run uses this many Mozilla roots so update-ca-certificates takes ~0.1 s, not ~1 s.
QUICK_MOZILLA = 5
POLL = 0.005  # seconds between looks at the bundles: the error on every latency figure


def full_mozilla_count() -> int:
    return len(list(MOZILLA_DIR.glob("mozilla/*.crt")))


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts and a 5-root CA set: proves the script runs, not speed")
    parser.add_argument("--settle-ms", type=int, default=None,
                        help="override watch.settle_ms (default: the daemon's own default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree")
    if extra:
        extra(parser)
    return parser.parse_args()


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-certd-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the tree


@dataclass
class BenchTree:
    """A conftest Tree plus the timeline wrapper and a place for bare runs' CA files."""

    tree: Tree
    mozilla: int
    settle_ms: int
    timeline: Path = field(init=False)
    update: Path = field(init=False)

    def __post_init__(self) -> None:
        root = self.tree.root
        self.timeline = root / "update-timeline.log"
        self.update = root / "bench-update"
        # Wall-clock start and end of every update run, so a latency splits into "before
        # the update", "the update" and "after it". Bare runs go through it too, so both
        # sides of every ratio pay the same two `date` forks.
        self.update.write_text(
            "#!/bin/sh\n"
            f"printf 'start %s\\n' \"$(date +%s.%N)\" >> '{self.timeline}'\n"
            f"'{root / 'update-wrapper'}' \"$@\"\n"
            "rc=$?\n"
            f"printf 'end %s\\n' \"$(date +%s.%N)\" >> '{self.timeline}'\n"
            "exit $rc\n")
        self.update.chmod(0o755)
        self.tree.write_config(trust_store__update_command=[str(self.update)],
                               watch__settle_ms=self.settle_ms)

    @property
    def root(self) -> Path:
        return self.tree.root

    def runs(self) -> int:
        """update_command runs so far: the daemon's and the bare ones."""
        return self.tree.update_runs()

    def timeline_entries(self) -> list[tuple[str, float]]:
        try:
            lines = self.timeline.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(kind, float(value)) for kind, value in (line.split() for line in lines)]

    def bare_dir(self, name: str) -> Path:
        """A sibling of edge-certd's ca_dir for CA files that bare runs install."""
        path = self.root / "usr/local/share/ca-certificates" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bare_update(self, fresh: bool = False) -> float:
        """One bare update run on this tree; returns its wall time in seconds."""
        argv = [str(self.update)] + (["--fresh"] if fresh else [])
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True)
        return time.monotonic() - start


def bench_tree(root: Path, quick: bool, settle_ms: int | None) -> BenchTree:
    mozilla = QUICK_MOZILLA if quick else full_mozilla_count()
    settle = WatchConfig().settle_ms if settle_ms is None else settle_ms
    return BenchTree(make_tree(root, mozilla_count=mozilla), mozilla, settle)


def roots(count: int, prefix: str) -> list[CA]:
    """Distinct self-signed roots; EC P-256, so a thousand take about a second."""
    return [CA.root(f"{prefix} {i:04d}") for i in range(count)]


def sha256_of_file(path: Path) -> str:
    """The fingerprint of the one certificate in a staged PEM file."""
    (sha,) = pem_fingerprints(path.read_bytes())
    return sha


def stage(directory: Path, cas: Sequence[CA], prefix: str, suffix: str = ".pem") -> list[Path]:
    """Write each CA to its own file in `directory`, ready to be renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ca in enumerate(cas):
        path = directory / f"{prefix}-{i:04d}{suffix}"
        path.write_bytes(ca.cert_pem)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- trust probe


class TrustProbe:
    """Is a set of CAs in edge-roots.pem and the system bundle yet?

    A file is parsed again only when its inode, size or mtime changed: both files are
    replaced by rename, so a changed stat means a complete new file, and a poll that finds
    nothing new costs two stat calls, not a parse of a 200 kB bundle.
    """

    def __init__(self, files: Iterable[Path]) -> None:
        self.files = list(files)
        self._cache: dict[Path, tuple[tuple[int, int, int], set[str]]] = {}

    def _fingerprints(self, path: Path) -> set[str]:
        try:
            st = path.stat()
        except FileNotFoundError:
            return set()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        try:
            found = pem_fingerprints(path.read_bytes())
        except FileNotFoundError:
            return set()
        self._cache[path] = (key, found)
        return found

    def has_all(self, shas: set[str]) -> bool:
        return all(shas <= self._fingerprints(path) for path in self.files)

    def wait(self, shas: set[str], timeout: float, start: float | None = None) -> float:
        """Seconds from `start` (monotonic; default now) until every file holds `shas`."""
        start = time.monotonic() if start is None else start
        deadline = start + timeout
        while not self.has_all(shas):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(shas)} CAs not trusted within {timeout:.0f} s")
            time.sleep(POLL)
        return time.monotonic() - start


def probe_for(tree: Tree) -> TrustProbe:
    return TrustProbe([tree.edge_roots, tree.system_bundle])


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """`edge-certd run` as systemd starts it: Type=notify with a real NOTIFY_SOCKET.

    A thread reads the socket all the time, as systemd does: the kernel queues only
    net.unix.max_dgram_qlen (often 10) datagrams, and after that the daemon's sd_notify()
    blocks. Use as a context manager; the process is always stopped (SIGTERM, then SIGKILL).
    """

    def __init__(self, tree: Tree, work: Path, python: str = sys.executable,
                 watchdog_usec: int | None = None) -> None:
        self.tree = tree
        self.work = work
        self.python = python
        self.watchdog_usec = watchdog_usec
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "daemon.log"
        self.messages: list[tuple[float, str]] = []  # (monotonic time, datagram)
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._serial = 0

    def start(self, timeout: float = 120.0) -> float:
        """Start the daemon; return the seconds from spawn to its READY=1 datagram."""
        self._serial += 1
        sock_path = self.work / f"notify-{self._serial}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read, args=(self._sock,), daemon=True)
        self._reader.start()
        env = {k: v for k, v in os.environ.items()
               if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")}
        env.update(NOTIFY_SOCKET=str(sock_path), EDGE_CERTD_LOG="stderr",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        argv = [self.python, "-m", "edge_certd", "--config", str(self.tree.config_path), "run"]
        seen = self.count("READY=1")
        with open(self.log_path, "ab") as log:
            start = time.monotonic()
            self.proc = subprocess.Popen(argv, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        ready_at = self.wait_for("READY=1", timeout, after=seen)
        return ready_at - start

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            with self._cond:
                self.messages.append((time.monotonic(), data.decode(errors="replace")))
                self._cond.notify_all()

    def count(self, field_: str) -> int:
        """How many datagrams so far carried `field_`, e.g. WATCHDOG=1."""
        with self._cond:
            return sum(field_ in text.split("\n") for _, text in self.messages)

    def wait_for(self, field_: str, timeout: float, after: int = 0) -> float:
        """Wait for datagram number `after` + 1 carrying `field_`; return when it came."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [t for t, text in self.messages if field_ in text.split("\n")]
                if len(hits) > after:
                    return hits[after]
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {self.proc.returncode} before "
                                       f"{field_}; log:\n{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {field_} within {timeout:.0f} s; log:\n"
                                       f"{self.log_tail()}")
                self._cond.wait(min(left, 0.2))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """Stop the daemon; return its exit code (None if it was not running)."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        self.proc = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def wait_quiet(bt: BenchTree, seconds: float, timeout: float = 60.0) -> int:
    """Wait until no update run has started or ended for `seconds`; return the run count."""
    deadline = time.monotonic() + timeout
    last = (bt.runs(), len(bt.timeline_entries()))
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = (bt.runs(), len(bt.timeline_entries()))
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= seconds and last[1] % 2 == 0:
            return last[0]
    raise TimeoutError(f"update runs still going after {timeout:.0f} s")


# --------------------------------------------------------------------------- figures


def phases(entries: Sequence[tuple[str, float]], wall0: float, latency: float
           ) -> dict[str, float] | None:
    """Split one latency at the first update run that followed the drop (wall clock)."""
    starts = [t for kind, t in entries if kind == "start"]
    ends = [t for kind, t in entries if kind == "end"]
    if not starts or not ends:
        return None
    return {"before_update": starts[0] - wall0, "update": ends[0] - starts[0],
            "after_update": latency - (ends[0] - wall0)}


def median_phases(items: Sequence[dict[str, float] | None]) -> dict[str, float] | None:
    present = [p for p in items if p]
    if not present:
        return None
    return {key: rounded(median([p[key] for p in present])) for key in present[0]}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rounded(value: float, places: int = 4) -> float:
    return round(value, places)


def target(value: float | int, limit: float | int, unit: str = "") -> dict[str, Any]:
    """A figure with an upper-bound target."""
    return {"value": value, "target": f"<= {limit}{unit}", "met": value <= limit}


def emit(bench: str, quick: bool, figures: dict[str, Any], targets: dict[str, Any],
         notes: Sequence[str] = ()) -> None:
    """Print the one machine-readable line every script ends with."""
    line = {"bench": bench, "quick": quick, "python": sys.executable,
            "python_version": sys.version.split()[0], "figures": figures, "targets": targets,
            "notes": list(notes)}
    print(json.dumps(line, sort_keys=False), flush=True)
