"""Run the edge-certd benchmarks B1..B7 one after another and summarise them.

    python3 bench/run_all.py            # full: about ten minutes on two cores
    python3 bench/run_all.py --quick    # tiny counts: proves the scripts run, not speed
    python3 bench/run_all.py --only B1 B3

Each benchmark runs in its own process with this interpreter (so a leak or a slow import
in one cannot colour the next) and ends with one JSON line. This script prints the
machine, a table of every target, and one final JSON line holding everything. It exits
non-zero only when a benchmark failed to run, never because a target was missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "B1": "b1_drop.py",
    "B2": "b2_burst.py",
    "B3": "b3_idle.py",
    "B4": "b4_restart.py",
    "B5": "b5_verify.py",
    "B6": "b6_junk.py",
    "B7": "b7_probe.py",
}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    load = os.getloadavg()
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free_h": mem.strip(),
        "kernel": platform.release(),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "loadavg_at_start": load,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    found = {}
    for name in ("cryptography", "pydantic", "watchdog.version", "yaml"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[name] = "missing"
            continue
        version = [
            getattr(module, a)
            for a in ("__version__", "VERSION", "VERSION_STRING")
            if isinstance(getattr(module, a, None), str)
        ]
        found[name.split(".")[0]] = version[0] if version else "?"
    return found


def run_one(name: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / SCRIPTS[name]), *(["--quick"] if quick else []), *extra]
    print(f"== {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"bench": name, "error": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    print(lines[-1], flush=True)
    return result


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| bench | figure | value | target | met |", "|---|---|---|---|---|"]
    for result in results:
        if "error" in result:
            rows.append(f"| {result['bench']} | (failed: {result['error']}) | | | |")
            continue
        for figure, t in result.get("targets", {}).items():
            met = "yes" if t["met"] else "**no**"
            rows.append(f"| {result['bench']} | {figure} | {t['value']} | {t['target']} | {met} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), default=sorted(SCRIPTS))
    args, extra = parser.parse_known_args()
    info = machine()
    print(json.dumps({"machine": info}), file=sys.stderr, flush=True)
    results = [run_one(name, args.quick, extra) for name in args.only]
    print(table(results), file=sys.stderr)
    print(json.dumps({"machine": info, "quick": args.quick, "results": results}), flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
