"""B7: one gateway probe against a loopback TLS gateway, next to one `openssl s_client`.

The gateway is `openssl s_server` on 127.0.0.1 serving leaf + intermediate, as an IoT Edge
gateway does; its root is installed on a full-size device tree by one `edge-certd sync`.
One probe is what edge-certd-probe.service does for each endpoint of the daemon's plan:
`diagnose.watch.run_probe` on the plan's request (DNS, TCP, TLS, the chain against every
trust store the plan names, the result file written). It is timed in process, CPU
(time.process_time, plus its children's: one `openssl verify` per store) and wall, so
Python's start-up is not in it; the whole
`edge-certd probe` process is measured beside it for scale. The floor is one
`openssl s_client` handshake with the same checks (a process: its start-up is in it).
Probes and handshakes alternate, so drift hits both alike.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import benchlib as bl
from b5_verify import free_port, wait_listening

from edge_certd.config import load_config
from edge_certd.diagnose.watch import plan_for_config, requests_from_plan, run_probe


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_child(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one child process that must succeed."""
    cpu0, start = child_cpu(), time.monotonic()
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, cwd=str(bl.REPO), check=False)
    wall, cpu = time.monotonic() - start, child_cpu() - cpu0
    if proc.returncode != 0:  # a failed check is not a timing
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-600:]}")
    return wall, cpu


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    times = 5 if args.quick else 15
    openssl = bl.require_tool("openssl")
    with bl.workdir(args.keep) as work:
        bt = bl.bench_tree(work / "device", args.quick, args.settle_ms)
        root, leaf, key, chain, root_pem = bl.gateway_files(work, "B7")
        (bt.tree.drop).mkdir(parents=True, exist_ok=True)
        (bt.tree.drop / "gateway-root.pem").write_bytes(root.cert_pem)
        port = free_port()
        result = work / "probe-result.json"
        bt.tree.write_config(
            trust_store__update_command=[str(bt.update)],
            watch__settle_ms=bt.settle_ms,
            gateway__host="127.0.0.1",
            gateway__port=port,
            gateway__servername="localhost",
            gateway__result_file=str(result),
        )
        cli = [sys.executable, "-m", "edge_certd", "--config", str(bt.tree.config_path)]
        subprocess.run([*cli, "sync"], check=True, capture_output=True, cwd=str(bl.REPO))
        config, _ = load_config(str(bt.tree.config_path))
        plan = plan_for_config(config)
        assert plan is not None
        (work / "plan.json").write_text(json.dumps(plan))
        (request,) = requests_from_plan(plan)[:1]
        s_server = subprocess.Popen(
            [openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(leaf), "-key", str(key)]
            + ["-cert_chain", str(chain), "-www", "-quiet"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client_argv = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
        client_argv += ["-verify_hostname", "localhost", "-CAfile", str(root_pem), "-verify_return_error"]
        client_argv += ["-brief"]
        probe_argv = [*cli, "probe", "--plan", str(work / "plan.json"), "--output", str(result)]
        walls, cpus, client_walls, client_cpus, proc_walls, proc_cpus = [], [], [], [], [], []
        try:
            wait_listening(port, s_server)
            run_probe([request], str(result))  # warm: imports and the first TLS context
            for _ in range(times):
                cpu0, start = time.process_time() + child_cpu(), time.monotonic()
                (probe,) = run_probe([request], str(result))
                walls.append(time.monotonic() - start)
                cpus.append(time.process_time() + child_cpu() - cpu0)  # its openssl verify runs too
                if probe.state != "trusted":
                    raise RuntimeError(f"the probe says {probe.state}: {probe.message}")
                wall, cpu = timed_child(client_argv)
                client_walls.append(wall)
                client_cpus.append(cpu)
            for _ in range(max(3, times // 3)):
                wall, cpu = timed_child(probe_argv)
                proc_walls.append(wall)
                proc_cpus.append(cpu)
        finally:
            s_server.terminate()
            s_server.wait(timeout=10)
    cpu_median = bl.median(cpus)
    ratio = bl.rounded(bl.median(walls) / bl.median(client_walls), 2)
    figures = {
        "probes": times,
        "stores_checked": len(request.stores),
        "probe_cpu_s": bl.spread(cpus),
        "probe_wall_s": bl.spread(walls),
        "s_client_wall_s": bl.spread(client_walls),
        "s_client_cpu_s": bl.spread(client_cpus),
        "ratio_wall_to_s_client": ratio,
        "ratio_per_probe": bl.spread([w / c for w, c in zip(walls, client_walls, strict=True)], 2),
        "probe_process_wall_s": bl.spread(proc_walls),
        "probe_process_cpu_s": bl.spread(proc_cpus),
    }
    targets = {
        "probe_cpu_s_median": bl.target(bl.rounded(cpu_median), 0.05, " s"),
        "ratio_wall_to_s_client": bl.target(ratio, 2.0),
    }
    bl.emit(
        "B7",
        args.quick,
        figures,
        targets,
        [
            "probe_* is one run_probe() in process (what the probe unit does per endpoint); "
            "probe_process_* is the whole `edge-certd probe` process, Python's start-up included"
        ],
    )


if __name__ == "__main__":
    main()
