"""B1: drop to trusted.

Time from rename() into drop_dir until the CA is in both edge-roots.pem and the system
bundle, against a bare update-ca-certificates run that installs one CA on the same tree.
Drops and bare runs alternate, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import os
import time

import benchlib as bl


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    drops = 2 if args.quick else 12
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        staging = bt.root / "staging"  # same file system as drop_dir, so rename() is atomic
        dropped = bl.stage(staging, bl.roots(drops + 1, "B1 gateway root"), "gateway-root")
        bare = bl.stage(staging, bl.roots(drops + 1, "B1 bare root"), "bare-root", ".crt")
        bare_dir = bt.bare_dir("bench-bare")
        probe = bl.probe_for(bt.tree)
        latencies, floors, runs_per_drop, phases = [], [], [], []
        floors_inner: list[float] = []
        with bl.RunningDaemon(bt.tree) as daemon:
            daemon.wait_ready()  # the start-up sync, its update run included, is over
            for i in range(drops + 1):  # round 0 warms both paths up and is not counted
                os.rename(bare[i], bare_dir / bare[i].name)
                bare_marks = len(bt.timeline_entries())
                floor = bt.bare_update()
                # Only its "update" phase (inside the wrapper, no fork) is used.
                bare_inner = bl.phases(bt.timeline_entries()[bare_marks:], 0, 0)
                before = bt.runs()  # the daemon is idle: its last sync ended
                ca_sha = bl.sha256_of_file(dropped[i])
                marks = len(bt.timeline_entries())
                mark = daemon.mark()
                wall0 = time.time()
                start = time.monotonic()
                os.rename(dropped[i], bt.tree.drop / dropped[i].name)
                latency = probe.wait({ca_sha}, timeout=120, start=start)
                # The sync's end (after the bundles: its manifest and record), then count.
                daemon.wait_synced(mark, check=lambda sha=ca_sha: probe.has_all({sha}), timeout=120)
                after = bt.runs()
                if i == 0:
                    continue
                latencies.append(latency)
                floors.append(floor)
                if bare_inner:
                    floors_inner.append(bare_inner["update"])
                runs_per_drop.append(after - before)
                phases.append(bl.phases(bt.timeline_entries()[marks:], wall0, latency))
            exit_code = daemon.stop()
    ratio = bl.rounded(bl.median(latencies) / bl.median(floors), 3)
    figures = {
        "drops": drops,
        "mozilla_roots": bt.mozilla,
        "settle_ms": bt.settle_ms,
        "drop_to_trusted_median_s": bl.rounded(bl.median(latencies)),
        "bare_update_median_s": bl.rounded(bl.median(floors)),
        "ratio": ratio,
        # Each drop against the bare run just before it: the spread of the ratio itself.
        "ratio_per_drop": bl.spread([d / f for d, f in zip(latencies, floors, strict=True)], 3),
        "drop_to_trusted": bl.spread(latencies),
        "bare_update": bl.spread(floors),
        "drop_to_trusted_s": [bl.rounded(x) for x in latencies],
        "bare_update_s": [bl.rounded(x) for x in floors],
        "update_runs_per_drop": runs_per_drop,
        "median_phases_s": bl.median_phases(phases),
        # The same clock as the phases' "update": inside the wrapper, without the fork.
        "bare_update_inner_median_s": bl.rounded(bl.median(floors_inner)),
        "daemon_exit_code": exit_code,
    }
    bl.emit(
        "B1",
        args.quick,
        figures,
        {"ratio": bl.target(ratio, 1.05)},
        [
            "phases: before_update = rename to update start (settle window, scan, judge, "
            "write); update = the update run; after_update = update end to both files "
            "holding the CA (bundles written, probe granularity 5 ms)"
        ],
    )


if __name__ == "__main__":
    main()
