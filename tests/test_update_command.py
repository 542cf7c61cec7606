"""The system store runs its update command (a real `sh` here) with a deadline, keeps the
daemon's watchdog fed while it runs, and keeps every byte it printed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge_certd.core.errors import UpdateCommandError
from edge_certd.targets.system import SystemStore


def store(tmp_path: Path, script: str, timeout: float, beats: list[float]) -> SystemStore:
    command = tmp_path / "update"
    command.write_text("#!/bin/sh\n" + script)
    command.chmod(0o755)
    return SystemStore(
        ca_dir=str(tmp_path / "ca"),
        system_bundle=str(tmp_path / "bundle.pem"),
        update_command=[str(command)],
        timeout=timeout,
        heartbeat=lambda: beats.append(time.monotonic()),
    )


def test_a_slow_update_keeps_the_heartbeat_going_and_its_whole_output(tmp_path: Path) -> None:
    beats: list[float] = []
    # More than a pipe's 64 KiB before the pause: a reader that stopped would block the command.
    script = "head -c 100000 /dev/zero | tr '\\0' x; echo; sleep 2.5; echo '1 added, 0 removed; done.'\n"
    summary = store(tmp_path, script, 60, beats).run_update(fresh=False)
    assert summary.output.count("x") == 100000
    assert (summary.added, summary.removed) == (1, 0)
    # communicate() waits in one-second slices, and a 2.5 s sleep outlasts at least two.
    assert len(beats) >= 2


def test_an_update_past_its_deadline_is_killed_with_its_children(tmp_path: Path) -> None:
    beats: list[float] = []
    pid_file = tmp_path / "child.pid"
    script = f"echo started; sleep 600 & echo $! > {pid_file}; wait\n"
    started = time.monotonic()
    with pytest.raises(UpdateCommandError) as caught:
        store(tmp_path, script, 2, beats).run_update(fresh=False)
    assert "no result after 2 s" in str(caught.value)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        # The group was SIGKILLed; the reaped-or-zombie child must not be running `sleep`.
        for _ in range(600):
            os.kill(child, 0)
            if _is_zombie(child):
                raise ProcessLookupError
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
