"""B4: restart with many managed CAs and no change.

The first start installs the CAs (one update run). Each restart after it must find
nothing to do: the time from spawn to READY=1 on a real NOTIFY_SOCKET, and the number of
update_command runs it caused (zero wanted). For scale, the time Python alone takes to
start and to import the daemon is measured too: no change to edge-certd can go below it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import benchlib as bl


def spawn_time(argv: list[str], times: int) -> float:
    took = []
    for _ in range(times):
        start = time.monotonic()
        subprocess.run(argv, check=True, cwd=str(bl.REPO), capture_output=True)
        took.append(time.monotonic() - start)
    return bl.median(took)


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    managed, restarts = (20, 2) if args.quick else (1000, 7)
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        bl.stage(bt.tree.drop, bl.roots(managed, "B4 managed root"), "managed-root")
        ready_times, runs = [], []
        with bl.RunningDaemon(bt.tree) as daemon:
            # READY=1 comes after the start-up sync, so its update runs are all counted.
            first = daemon.wait_ready(timeout=600).at - daemon.spawned_at
            installed = bt.runs()
            daemon.stop()
            for _ in range(restarts):
                before = bt.runs()
                mark = daemon.mark()
                daemon.start()
                ready_times.append(daemon.wait_ready(mark, timeout=120).at - daemon.spawned_at)
                runs.append(bt.runs() - before)
                exit_code = daemon.stop()
        python_floor = spawn_time([sys.executable, "-c", "pass"], 5)
        import_floor = spawn_time([sys.executable, "-c", "import edge_certd.daemon.loop"], 5)
    ready = bl.rounded(bl.median(ready_times), 3)
    figures = {
        "managed_cas": managed,
        "restarts": restarts,
        "first_start_to_ready_s": bl.rounded(first, 3),
        "first_start_update_runs": installed,
        "restart_to_ready_median_s": ready,
        "restart_to_ready_max_s": bl.rounded(max(ready_times), 3),
        "restart_to_ready_s": [bl.rounded(x, 3) for x in ready_times],
        "restart_to_ready": bl.spread(ready_times, 3),
        "update_runs_per_restart": runs,
        "python_start_s": bl.rounded(python_floor, 3),
        "python_start_and_import_daemon_s": bl.rounded(import_floor, 3),
        "daemon_exit_code": exit_code,
    }
    targets = {
        "restart_to_ready_median_s": bl.target(ready, 0.3, " s"),
        "update_runs_max": bl.target(max(runs), 0),
    }
    bl.emit("B4", args.quick, figures, targets)


if __name__ == "__main__":
    main()
