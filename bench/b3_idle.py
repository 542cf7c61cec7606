"""B3: the daemon's cost while it waits, which is nearly always.

`edge-certd run` with managed CAs, then idle: the whole service's memory (Rss and Pss of the
daemon and every process below it, from /proc/<pid>/smaps_rollup), the daemon's own
(VmRSS, VmHWM) and its CPU seconds (utime + stime) from /proc/<pid>/status and /stat. WATCHDOG_USEC is set
as the shipped unit sets it (WatchdogSec=60s), so the idle figure includes the pings.
"""

from __future__ import annotations

import os
import time

import benchlib as bl

WATCHDOG_USEC = 60_000_000  # systemd/edge-certd.service: WatchdogSec=60s
TICK = os.sysconf("SC_CLK_TCK")
JUDGE_IDLE = 30.0  # edge_certd.worker.server.IDLE_SECONDS


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces, so count fields after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / TICK


def status_kib(pid: int) -> dict[str, int]:
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                found[key] = int(value.split()[0])
    return found


def service_memory(pid: int) -> dict[str, float]:
    """The whole service: the daemon and every process below it (the judge child outside
    systemd, a sync's update run), in MB. Pss shares a library page among the processes
    that map it; Rss counts it in full for each."""
    pids = bl.process_tree(pid)
    each = [bl.memory_kib(p) for p in pids]
    total = {
        key: round(sum(m[key] for m in each) / 1024, 1) for key in ("Rss", "Pss", "Pss_Anon", "Pss_File")
    }
    return {**total, "processes": len(pids)}


def main() -> None:
    args = bl.parse_args(
        __doc__ or "",
        lambda p: p.add_argument(
            "--idle", type=float, default=None, help="idle seconds (default 60, quick 3)"
        ),
    )
    managed = 10 if args.quick else 100
    idle = args.idle or (3.0 if args.quick else 60.0)
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        bl.stage(bt.tree.drop, bl.roots(managed, "B3 managed root"), "managed-root")
        with bl.RunningDaemon(bt.tree, watchdog_usec=WATCHDOG_USEC) as daemon:
            # READY=1 comes after the start-up sync and its update run.
            ready = daemon.wait_ready(timeout=120).at - daemon.spawned_at
            # The loop pings once as it starts; the idle window begins after that ping.
            daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", what="the first WATCHDOG=1")
            runs0, pings0 = bt.runs(), daemon.count("WATCHDOG=1")
            cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
            at_ready = service_memory(daemon.pid)
            # Sampled through the window: the judge idles out after JUDGE_IDLE seconds, so
            # the samples from then on are what the service holds while it waits.
            samples: list[tuple[float, dict[str, float]]] = []
            while (elapsed := time.monotonic() - wall0) < idle:
                time.sleep(min(idle / 12, idle - elapsed))
                samples.append((time.monotonic() - wall0, service_memory(daemon.pid)))
            cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
            mem = status_kib(daemon.pid)
            runs, pings = bt.runs() - runs0, daemon.count("WATCHDOG=1") - pings0
            exit_code = daemon.stop()
    per_minute = round((cpu1 - cpu0) / ((wall1 - wall0) / 60), 4)
    rss_mb = round(mem["VmRSS"] / 1024, 1)
    settled = [m for at, m in samples if at >= min(JUDGE_IDLE + 5, idle / 2)] or [samples[-1][1]]
    service_rss = bl.spread([m["Rss"] for m in settled], 1)
    service_pss = bl.spread([m["Pss"] for m in settled], 1)
    figures = {
        "managed_cas": managed,
        "idle_s": bl.rounded(wall1 - wall0, 2),
        "service_rss_mb": service_rss,
        "service_pss_mb": service_pss,
        "service_processes": [m["processes"] for _, m in samples],
        "service_at_ready": at_ready,
        "service_last_sample": samples[-1][1],
        "rss_mb": rss_mb,
        "peak_rss_mb": round(mem["VmHWM"] / 1024, 1),
        "rss_anon_mb": round(mem.get("RssAnon", 0) / 1024, 1),
        "rss_file_mb": round(mem.get("RssFile", 0) / 1024, 1),
        "threads": mem.get("Threads"),
        "cpu_s_idle": round(cpu1 - cpu0, 3),
        "cpu_s_per_idle_minute": per_minute,
        "clock_tick_s": 1 / TICK,
        "watchdog_pings": pings,
        "update_runs_while_idle": runs,
        "start_to_ready_s": bl.rounded(ready, 3),
        "daemon_exit_code": exit_code,
    }
    targets = {
        # Pss divides each shared page among the processes that map it (what the service adds
        # to the device); Rss counts every mapped page in full (the service alone on a device).
        "service_pss_mb_median": bl.target(service_pss["median"], 30, " MB"),
        "service_rss_mb_median": bl.target(service_rss["median"], 30, " MB"),
        "cpu_s_per_idle_minute": bl.target(per_minute, 0.0),
    }
    bl.emit(
        "B3",
        args.quick,
        figures,
        targets,
        [
            "service_* is the daemon and every process below it, sampled from "
            f"{JUDGE_IDLE + 5:.0f} s into the idle window (the judge idles out after {JUDGE_IDLE:.0f} s); "
            "under systemd the judge is its own socket-activated unit that exits when idle the same way",
            "CPU time is counted in clock ticks, so a short --idle cannot resolve the target",
        ],
    )


if __name__ == "__main__":
    main()
