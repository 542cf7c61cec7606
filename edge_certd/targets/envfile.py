"""The env file: every variable the other targets contribute, in one file that both a shell
(`set -a; . ca.env`) and systemd's `EnvironmentFile=` read."""

from __future__ import annotations

import os
from collections.abc import Sequence

from edge_certd.store.fsutil import ensure_directory, write_atomic
from edge_certd.targets.base import Change, Holding, Outcome, Target


class EnvFile:
    name = "env"

    def __init__(self, *, path: str, contributors: Sequence[Target]) -> None:
        self.path = path
        self.contributors = tuple(contributors)

    def holdings(self) -> tuple[Holding, ...]:
        return ()  # doctor checks the file's paths itself (judge_env)

    def env(self) -> tuple[tuple[str, str], ...]:
        return ()

    def text(self) -> str:
        lines = [
            "# Written by edge-certd; edits are overwritten. Use from a shell with",
            "#   set -a; . " + self.path + "; set +a",
            "# or from a unit with EnvironmentFile=" + self.path,
        ]
        for target in self.contributors:
            # Quotes only where needed: both sh and systemd strip them, but plain reads easier.
            lines += [f'{key}="{value}"' if " " in value else f"{key}={value}"
                      for key, value in target.env()]
        return "\n".join(lines) + "\n"

    def apply(self, change: Change) -> Outcome:
        """Rewrite the file when its text differs. Raises WriteError."""
        ensure_directory(os.path.dirname(self.path), 0o755)
        if write_atomic(self.path, self.text().encode(), 0o644):
            return Outcome(changed=True, detail=os.path.basename(self.path))
        return Outcome(changed=False)
