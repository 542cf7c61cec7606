"""B6: a drop directory of 50,000 junk files and one real root (issue 11, "Scale").

The root is installed first, by a sync of its own (untimed: its update run is B1's floor);
then the junk arrives and `edge-certd sync` runs five times, each under a small wrapper
process that reports the peak RSS of the sync and its judge from getrusage(RUSAGE_CHILDREN),
the kernel's own account; the time of each sync is its wall time. Targets (issue 24): RSS
<= 40 MB and one sync <= 2 s. Junk verdicts are never cached, so every sync judges every
file; the first also names the first 100 in the journal. status.json must stay small
whatever the directory holds.

    python3 bench/b6_junk.py [--quick] [--files N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
from support.certs import CA

SYNCS = 5
# Runs the sync as its child and says the largest RSS of it and of what it waited for (the
# judge): RUSAGE_CHILDREN of this wrapper, which itself is not counted.
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def _add(parser: object) -> None:
    parser.add_argument("--files", type=int, default=None, help="junk files (default 50000)")  # type: ignore[attr-defined]


def _sync(config: Path) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """One `edge-certd sync` under the PEAK wrapper: wall seconds, peak RSS in KiB, the run."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "edge_certd", "--config", str(config), "sync"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "EDGE_CERTD_LOG": "stderr"},
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    seconds = time.monotonic() - start
    return seconds, int(done.stderr.rsplit("peak-kib ", 1)[1].split()[0]), done


def main() -> None:
    args = bl.parse_args(__doc__ or "", _add)
    count = args.files or (500 if args.quick else 50_000)
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        tree = bt.tree
        tree.drop.mkdir(parents=True, exist_ok=True)
        # The device trusts its root before the junk arrives: the timed syncs pay for the
        # junk, not for the update run that installs the root (B1's floor, measured there).
        (tree.drop / "gateway-root.pem").write_bytes(CA.root("B6 Root").cert_pem)
        install_s, _, done = _sync(tree.config_path)
        if done.returncode != 0:
            raise SystemExit(f"the root's sync exited {done.returncode}: {done.stderr[-2000:]}")
        for i in range(count):
            (tree.drop / f"junk-{i:05d}.pem").write_bytes(b"not a certificate %d\n" % i)
        seconds = []
        peaks = []
        for _ in range(SYNCS):
            wall, peak, done = _sync(tree.config_path)
            if done.returncode != 3:
                raise SystemExit(f"sync exited {done.returncode}: {done.stderr[-2000:]}")
            seconds.append(wall)
            peaks.append(peak)
        status_bytes = (tree.state / "status.json").stat().st_size
    figures = {
        "junk_files": count,
        "root_install_sync_s": bl.rounded(install_s, 2),
        "first_sync_s": bl.rounded(seconds[0], 2),
        "second_sync_s": bl.rounded(seconds[1], 2),
        "sync_s": bl.spread(seconds, 2),
        "peak_rss_mb": bl.rounded(max(peaks) / 1024, 1),
        "peak_rss_mb_per_sync": bl.spread([p / 1024 for p in peaks], 1),
        "status_json_bytes": status_bytes,
    }
    targets = {
        "peak_rss_mb": bl.target(figures["peak_rss_mb"], 40, " MB"),
        "slowest_sync_s": bl.target(bl.rounded(max(seconds), 2), 2, " s"),
        "status_json_bytes": bl.target(status_bytes, 200_000),
    }
    bl.emit(
        "B6",
        args.quick,
        figures,
        targets,
        notes=["peak RSS is the largest of the CLI process and its judge worker, per sync"],
    )


if __name__ == "__main__":
    main()
