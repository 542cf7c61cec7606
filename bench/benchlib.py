"""What every benchmark shares: a full-size device tree, bare update-ca-certificates runs,
trust probes and the final JSON line. The daemon runs under the tests' own harness
(tests/support/daemonrun.py: a real NOTIFY_SOCKET, waits for READY=1 and the end of a sync).

Timings on a shared machine drift, so every script compares figures taken in the same run
(a drop against a bare update run on the same tree, a minute apart at most). Nothing here
touches the host's trust store: every path is under a temporary directory.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _extra in (REPO, REPO / "tests"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

# The test suite's tree and CA helpers, so the bench measures the layout the tests prove,
# and its daemon harness (bl.RunningDaemon): the same waits for READY=1 and a sync's end.
from support.certs import CA  # noqa: E402
from support.daemonrun import RunningDaemon  # noqa: E402, F401
from support.tree import MOZILLA_DIR, Tree, make_tree  # noqa: E402

from edge_certd.config import WatchConfig  # noqa: E402
from edge_certd.core.pem import pem_fingerprints  # noqa: E402

# An installed package is byte-compiled (dh_python3's postinst); the daemon under the tests'
# harness runs with PYTHONDONTWRITEBYTECODE, so without this every start compiled afresh.
compileall.compile_dir(str(REPO / "edge_certd"), quiet=1)

# A quick run uses this many Mozilla roots so update-ca-certificates takes ~0.1 s, not ~1 s.
QUICK_MOZILLA = 5
POLL = 0.005  # seconds between looks at the bundles: the error on every latency figure


def full_mozilla_count() -> int:
    return len(list(MOZILLA_DIR.glob("mozilla/*.crt")))


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts and a 5-root CA set: proves the script runs, not speed",
    )
    parser.add_argument(
        "--settle-ms",
        type=int,
        default=None,
        help="override watch.settle_ms (default: the daemon's own default)",
    )
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
            "exit $rc\n"
        )
        self.update.chmod(0o755)
        self.tree.write_config(
            trust_store__update_command=[str(self.update)], watch__settle_ms=self.settle_ms
        )

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


def require_tool(name: str) -> str:
    """The path of a tool the benchmark cannot do without; exits with a message when absent."""
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed")
    return found


def gateway_files(work: Path, label: str) -> tuple[CA, Path, Path, Path, Path]:
    """A gateway's files as IoT Edge serves them (root → Edge CA → server for localhost):
    the root, the server certificate, its key, the chain above it and the root's PEM."""
    root = CA.root(f"{label} Gateway Root")
    server = root.intermediate(f"{label} Edge CA").issue_server("gw", ["localhost", "127.0.0.1"])
    leaf, key = server.write(work / "server")
    leaf.write_bytes(server.cert_pem)
    chain = work / "chain.pem"
    chain.write_bytes(server.chain_pem()[len(server.cert_pem) :])
    root_pem = work / "root.pem"
    root_pem.write_bytes(root.cert_pem)
    return root, leaf, key, chain, root_pem


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

    def has_none(self, shas: set[str]) -> bool:
        return not any(shas & self._fingerprints(path) for path in self.files)

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


# --------------------------------------------------------------------------- figures


def phases(entries: Sequence[tuple[str, float]], wall0: float, latency: float) -> dict[str, float] | None:
    """Split one latency at the first update run that followed the drop (wall clock)."""
    starts = [t for kind, t in entries if kind == "start"]
    ends = [t for kind, t in entries if kind == "end"]
    if not starts or not ends:
        return None
    return {
        "before_update": starts[0] - wall0,
        "update": ends[0] - starts[0],
        "after_update": latency - (ends[0] - wall0),
    }


def median_phases(items: Sequence[dict[str, float] | None]) -> dict[str, float] | None:
    present = [p for p in items if p]
    if not present:
        return None
    return {key: rounded(median([p[key] for p in present])) for key in present[0]}


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], places: int = 4) -> dict[str, float]:
    """min, median and max: every figure is reported over at least five runs (issue 24)."""
    return {
        "min": rounded(min(values), places),
        "median": rounded(median(values), places),
        "max": rounded(max(values), places),
        "runs": len(values),
    }


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc/<pid>/task/*/children."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                queue += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and their anonymous and file-backed parts, from /proc/<pid>/smaps_rollup."""
    wanted = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous")
    found = dict.fromkeys(wanted, 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in found:
                    found[key] = int(value.split()[0])
    except OSError:
        pass  # it ended between the listing and the read
    return found


def rounded(value: float, places: int = 4) -> float:
    return round(value, places)


def target(value: float | int, limit: float | int, unit: str = "") -> dict[str, Any]:
    """A figure with an upper-bound target."""
    return {"value": value, "target": f"<= {limit}{unit}", "met": value <= limit}


def emit(
    bench: str, quick: bool, figures: dict[str, Any], targets: dict[str, Any], notes: Sequence[str] = ()
) -> None:
    """Print the one machine-readable line every script ends with."""
    line = {
        "bench": bench,
        "quick": quick,
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "figures": figures,
        "targets": targets,
        "notes": list(notes),
    }
    print(json.dumps(line, sort_keys=False), flush=True)
