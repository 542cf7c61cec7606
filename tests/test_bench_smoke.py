"""The benchmarks in bench/ run, in --quick mode, and end with a JSON line of figures.

Benchmarks are not timed tests: nothing here looks at how fast anything was, only that
each script runs against the real tools and reports what it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.tree import require_tool

BENCH = Path(__file__).resolve().parent.parent / "bench"

# script -> figures its JSON line must carry
EXPECTED = {
    "b1_drop.py": ("drop_to_trusted_median_s", "bare_update_median_s", "ratio"),
    "b2_burst.py": (
        "burst_to_all_trusted_s",
        "update_runs",
        "loop_extrapolated_s",
        "fsync_calls_to_install_all",
    ),
    "b3_idle.py": ("rss_mb", "service_rss_mb", "service_pss_mb", "cpu_s_per_idle_minute"),
    "b4_restart.py": ("restart_to_ready_median_s", "update_runs_per_restart"),
    "b5_verify.py": ("verify_cli_median_s", "s_client_median_s"),
    "b6_junk.py": ("first_sync_s", "second_sync_s", "peak_rss_mb", "status_json_bytes"),
    "b7_probe.py": ("probe_cpu_s", "probe_wall_s", "s_client_wall_s", "ratio_wall_to_s_client"),
}


def run_bench(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def last_json(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert lines, "no output"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_script_runs_quick_and_ends_with_its_figures(script: str) -> None:
    require_tool("update-ca-certificates")
    require_tool("openssl")
    proc = run_bench(str(BENCH / script), "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["quick"] is True
    for name in EXPECTED[script]:
        assert name in result["figures"], name
    for figure in result["targets"].values():
        assert set(figure) == {"value", "target", "met"}
    # Every daemon a script started was stopped cleanly by SIGTERM.
    assert result["figures"].get("daemon_exit_code", 0) == 0


def test_run_all_collects_each_result_into_one_line() -> None:
    require_tool("update-ca-certificates")
    proc = run_bench(str(BENCH / "run_all.py"), "--quick", "--only", "B4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert [r["bench"] for r in summary["results"]] == ["B4"]
    assert summary["machine"]["nproc"] >= 1
    assert "| B4 | restart_to_ready_median_s |" in proc.stderr


def test_run_all_fails_when_a_benchmark_cannot_run() -> None:
    # An unknown option makes the benchmark itself exit 2: that is a failure to run, which
    # must show, unlike a missed target.
    proc = run_bench(str(BENCH / "run_all.py"), "--quick", "--only", "B5", "--no-such-option")
    assert proc.returncode == 1
    summary = last_json(proc.stdout)
    assert summary["results"][0]["error"] == "exit 2"
