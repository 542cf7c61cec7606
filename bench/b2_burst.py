"""B2: a burst of 100 distinct roots renamed into drop_dir at once.

Measures the time until all are trusted (edge-roots.pem and the system bundle) and how
many times update_command ran. Compared, on the same tree in the same run, with:
- one bare update run that installs all of them at once (the floor: the system bundle
  must grow by that many CAs, and update-ca-certificates forks per CA);
- one bare update run that installs one CA;
- the loop people write today, `inotifywait | while read; do cp; update-ca-certificates;
  done`, timed on a sample and extrapolated. Each of its runs sees a bundle no bigger than
  the sample left it, so the extrapolation is a lower bound for the loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl

LOOP = """\
inotifywait -m -e moved_to -e close_write --format '%f' "$1" | while read -r f; do
  cp "$1/$f" "$2/${f%.pem}.crt"
  "$3" >/dev/null 2>&1
  echo done >> "$4"
done
"""


def bare_install(bt: bl.BenchTree, files: list[Path], name: str) -> float:
    """Time one bare run that installs `files`; then put the tree back as it was."""
    target = bt.bare_dir(name)
    for path in files:
        shutil.copyfile(path, target / (path.stem + ".crt"))
    took = bt.bare_update()
    shutil.rmtree(target)
    bt.bare_update(fresh=True)
    return took


def loop_sample(bt: bl.BenchTree, files: list[Path], work: Path) -> tuple[float, str]:
    """Seconds per file through the one-run-per-file loop, and how it was run."""
    drop = work / "loop-drop"
    drop.mkdir()
    local = bt.bare_dir("loop")
    done = work / "loop-done"
    inotifywait = shutil.which("inotifywait")
    if inotifywait is None:  # the same work without the watcher: still one run per file
        start = time.monotonic()
        for path in files:
            shutil.copyfile(path, local / (path.stem + ".crt"))
            subprocess.run([str(bt.update)], check=True, capture_output=True)
        took = time.monotonic() - start
        method = "sequential cp + update per file (inotifywait not installed)"
    else:
        script = work / "loop.sh"
        script.write_text(LOOP)
        loop = subprocess.Popen(
            ["sh", str(script), str(drop), str(local), str(bt.update), str(done)],
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert loop.stderr is not None
            while b"Watches established" not in loop.stderr.readline():
                if loop.poll() is not None:
                    raise RuntimeError("the inotifywait loop did not start")
            start = time.monotonic()
            for path in files:
                os.rename(path, drop / path.name)
            while _lines(done) < len(files):
                if time.monotonic() - start > 60 * len(files):
                    raise TimeoutError("the inotifywait loop stalled")
                time.sleep(0.01)
            took = time.monotonic() - start
        finally:
            os.killpg(loop.pid, 15)  # the group holds sh, inotifywait and the loop subshell
            loop.wait()
        method = "inotifywait -m | while read; do cp; update-ca-certificates; done"
    shutil.rmtree(local)
    bt.bare_update(fresh=True)
    return took / len(files), method


def fsyncs_to_install(bt: bl.BenchTree, files: list[Path], work: Path) -> int:
    """fsync calls of one `edge-certd sync` that installs `files` (all in drop_dir now).

    Counted by strace, so the figure is a count, not a time: it holds on any disk, and on
    flash every fsync costs milliseconds. update_command's own calls are left out (no -f).
    """
    parked = work / "fsync-parked"
    parked.mkdir()
    for path in files:
        os.rename(bt.tree.drop / path.name, parked / path.name)
    cli = [sys.executable, "-m", "edge_certd", "--config", str(bt.tree.config_path), "sync"]
    env = {**os.environ, "PYTHONPATH": str(bl.REPO)}
    subprocess.run(cli, check=True, capture_output=True, cwd=str(bl.REPO), env=env)
    for path in files:
        os.rename(parked / path.name, bt.tree.drop / path.name)
    counts = work / "fsync-counts"
    subprocess.run(
        ["strace", "-c", "-e", "trace=fsync,fdatasync", "-o", str(counts), *cli],
        check=True,
        capture_output=True,
        cwd=str(bl.REPO),
        env=env,
    )
    return sum(
        int(line.split()[3])
        for line in counts.read_text().splitlines()
        if line.split()[-1:] in (["fsync"], ["fdatasync"])
    )


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def burst_round(bt: bl.BenchTree, daemon: bl.RunningDaemon, burst: list[Path]) -> dict[str, float]:
    """Rename `burst` into drop_dir at once; wait until all are trusted and the sync ended.
    Then take them out again (and wait for that sync), so every round starts alike."""
    shas = {bl.sha256_of_file(p) for p in burst}
    probe = bl.probe_for(bt.tree)
    before = bt.runs()
    marks = len(bt.timeline_entries())
    mark = daemon.mark()
    wall0 = time.time()
    start = time.monotonic()
    for path in burst:
        os.rename(path, bt.tree.drop / path.name)
    spread = time.monotonic() - start
    total = probe.wait(shas, timeout=600, start=start)
    # Counted at the end of the sync that trusted the last of them: a later sync finds
    # nothing to change and runs no update.
    daemon.wait_synced(mark, check=lambda: probe.has_all(shas), timeout=600)
    runs = bt.runs() - before
    phases = bl.phases(bt.timeline_entries()[marks:], wall0, total) or {}
    mark = daemon.mark()
    for path in burst:
        os.rename(bt.tree.drop / path.name, path)
    daemon.wait_synced(mark, check=lambda: probe.has_none(shas), timeout=600)
    return {"total": total, "runs": runs, "spread": spread, **phases}


def main() -> None:
    args = bl.parse_args(
        __doc__ or "",
        lambda p: p.add_argument("--files", type=int, default=None, help="roots per burst (default 100)"),
    )
    count, sample, rounds = (10, 2, 2) if args.quick else (100, 10, 5)
    count = args.files or count
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        staging = bt.root / "staging"
        burst = bl.stage(staging, bl.roots(count, "B2 burst root"), "burst-root")
        bare_single = [bare_install(bt, burst[i : i + 1], "bench-single") for i in range(3)]
        per_file, method = loop_sample(
            bt, bl.stage(work / "loop-staging", bl.roots(sample, "B2 loop root"), "loop-root"), work
        )
        totals, floors, runs, befores, updates, afters, spreads = [], [], [], [], [], [], []
        with bl.RunningDaemon(bt.tree) as daemon:
            daemon.wait_ready()  # the start-up sync, its update run included, is over
            for _ in range(rounds):  # a bare run and a burst, alternating
                floors.append(bare_install(bt, burst, "bench-batch"))
                one = burst_round(bt, daemon, burst)
                totals.append(one["total"])
                runs.append(int(one["runs"]))
                spreads.append(one["spread"])
                if "update" in one:
                    befores.append(one["before_update"])
                    updates.append(one["update"])
                    afters.append(one["after_update"])
            exit_code = daemon.stop()
        for path in burst:
            os.rename(path, bt.tree.drop / path.name)
        fsyncs = fsyncs_to_install(bt, burst, work)
    ratios = [t / f for t, f in zip(totals, floors, strict=True)]
    ratio = bl.rounded(bl.median(totals) / bl.median(floors), 3)
    single = bl.median(bare_single)
    figures = {
        "files": count,
        "mozilla_roots": bt.mozilla,
        "settle_ms": bt.settle_ms,
        "rounds": rounds,
        "rename_spread_s": bl.spread(spreads),
        "burst_to_all_trusted_s": bl.rounded(bl.median(totals)),
        "burst_to_all_trusted": bl.spread(totals),
        "update_runs": max(runs),
        "update_runs_per_round": runs,
        "bare_update_all_at_once": bl.spread(floors),
        "bare_update_one_ca_s": bl.rounded(single),
        "ratio_to_bare_all_at_once": ratio,
        "ratio_per_round": bl.spread(ratios, 3),
        "ratio_to_bare_one_ca": bl.rounded(bl.median(totals) / single, 3),
        "loop_seconds_per_file": bl.rounded(per_file),
        "loop_sample_files": sample,
        "loop_extrapolated_s": bl.rounded(per_file * count, 1),
        "speedup_over_loop": bl.rounded(per_file * count / bl.median(totals), 1),
        "loop_method": method,
        "phases_s": {
            "before_update": bl.spread(befores) if befores else None,
            "update": bl.spread(updates) if updates else None,
            "after_update": bl.spread(afters) if afters else None,
        },
        "daemon_exit_code": exit_code,
        "fsync_calls_to_install_all": fsyncs,
    }
    targets = {
        "update_runs": bl.target(max(runs), 1),
        "ratio_to_bare_all_at_once": bl.target(ratio, 1.3),
        # One per CA file is the floor (each must be durable); the rest is per sync, not per file.
        "fsync_calls_to_install_all": bl.target(fsyncs, count + 20),
    }
    bl.emit(
        "B2",
        args.quick,
        figures,
        targets,
        [
            "each round: a bare run installing all the files at once (the floor), then the burst "
            "into the daemon, then the files taken out again (not timed); ratio_to_bare_one_ca "
            "is shown too, but a run that adds N CAs forks per CA and cannot cost the same as "
            "one that adds a single CA"
        ],
    )


if __name__ == "__main__":
    main()
