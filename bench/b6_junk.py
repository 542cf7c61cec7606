"""B6: a drop directory of 50,000 junk files and one real root (issue 11, "Scale").

Runs `edge-certd sync` five times, each under a small wrapper process that reports the
peak RSS of the sync and its judge from getrusage(RUSAGE_CHILDREN), the kernel's own
account; the time of each sync is its wall time. Targets (issue 24): RSS <= 40 MB and one
sync <= 2 s. The first sync judges every file; the others are the steady state a rescan
pays. status.json must stay small whatever the directory holds.

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


def main() -> None:
    args = bl.parse_args(__doc__ or "", _add)
    count = args.files or (500 if args.quick else 50_000)
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        tree = bt.tree
        tree.drop.mkdir(parents=True, exist_ok=True)
        (tree.drop / "gateway-root.pem").write_bytes(CA.root("B6 Root").cert_pem)
        for i in range(count):
            (tree.drop / f"junk-{i:05d}.pem").write_bytes(b"not a certificate %d\n" % i)
        seconds = []
        peaks = []
        for _ in range(SYNCS):
            start = time.monotonic()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK,
                    sys.executable,
                    "-m",
                    "edge_certd",
                    "--config",
                    str(tree.config_path),
                    "sync",
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "EDGE_CERTD_LOG": "stderr"},
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            seconds.append(time.monotonic() - start)
            if done.returncode != 3:
                raise SystemExit(f"sync exited {done.returncode}: {done.stderr[-2000:]}")
            peaks.append(int(done.stderr.rsplit("peak-kib ", 1)[1].split()[0]))
        status_bytes = (tree.state / "status.json").stat().st_size
    figures = {
        "junk_files": count,
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
