"""B6: a drop directory of 50,000 junk files and one real root (issue 11, "Scale").

Runs `edge-certd sync` twice as a child process and reads its peak RSS from
getrusage(RUSAGE_CHILDREN), the kernel's own account; the time of each sync is its wall
time. Targets: RSS <= 60 MB and one sync <= 10 s. The second sync is the steady state a
rescan pays; status.json must stay small whatever the directory holds.

    python3 bench/b6_junk.py [--quick] [--files N]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
from support.certs import CA


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
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), "sync"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "EDGE_CERTD_LOG": "stderr"},
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            seconds.append(time.monotonic() - start)
            if done.returncode != 3:
                raise SystemExit(f"sync exited {done.returncode}: {done.stderr[-2000:]}")
            # ru_maxrss of the children is the largest any child reached so far.
            peaks.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
        status_bytes = (tree.state / "status.json").stat().st_size
    figures = {
        "junk_files": count,
        "first_sync_s": bl.rounded(seconds[0], 2),
        "second_sync_s": bl.rounded(seconds[1], 2),
        "peak_rss_mb": bl.rounded(max(peaks) / 1024, 1),
        "status_json_bytes": status_bytes,
    }
    targets = {
        "peak_rss_mb": bl.target(figures["peak_rss_mb"], 60, " MB"),
        "slowest_sync_s": bl.target(bl.rounded(max(seconds), 2), 10, " s"),
        "status_json_bytes": bl.target(status_bytes, 200_000),
    }
    bl.emit(
        "B6",
        args.quick,
        figures,
        targets,
        notes=["peak RSS is the largest of the CLI process and its judge worker"],
    )


if __name__ == "__main__":
    main()
