"""The env file: every variable the other targets contribute, in one file that both a shell
(`set -a; . ca.env`) and systemd's `EnvironmentFile=` read.

Every value is written in single quotes. Inside them sh takes every character literally
(POSIX, 2.2.2 Single-Quotes), and so does systemd's parser (src/basic/env-file.c, state
SINGLE_QUOTE_VALUE), so a space, `$(...)`, a backtick, `"`, `\\` or `#` in a path or the
Java password is read as itself by both and never runs. What cannot be written that way is
refused by the configuration (config/rules.py): a single quote (sh would need `'\\''`, which
systemd reads differently) and control characters such as a newline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from edge_certd.core.errors import WriteError
from edge_certd.store.fsutil import ensure_directory, write_atomic
from edge_certd.targets.base import Change, Holding, Outcome, StoreFile, Target


def quote(value: str) -> str:
    """`value` in single quotes, read back unchanged by sh and by systemd.

    Raises:
        ValueError: `value` holds a single quote or a control character; the configuration
            refuses both, so this only guards against a new variable that forgot to.
    """
    if "'" in value or not value.isprintable():
        raise ValueError(f"cannot be written to an env file safely: {value!r}")
    return f"'{value}'"


class EnvFile:
    name = "env"

    def __init__(self, *, path: str, contributors: Sequence[Target]) -> None:
        self.path = path
        self.contributors = tuple(contributors)

    def holdings(self) -> tuple[Holding, ...]:
        return ()  # doctor checks the file's paths itself (judge_env)

    def env(self) -> tuple[tuple[str, str], ...]:
        return ()

    def stores(self) -> tuple[StoreFile, ...]:
        return ()

    def text(self) -> str:
        # The path never ends a comment line: systemd before v254 continued a comment whose
        # line ends in a backslash onto the next line, which would hide a variable.
        lines = [
            "# Written by edge-certd; edits are overwritten. Use from a shell with",
            f"#   set -a; . {self.path}; set +a",
            f"# or from a unit with EnvironmentFile={self.path} (in [Service]).",
        ]
        for target in self.contributors:
            lines += [f"{key}={quote(value)}" for key, value in target.env()]
        return "\n".join(lines) + "\n"

    def apply(self, change: Change) -> Outcome:
        """Rewrite the file when its text differs. Raises WriteError."""
        try:
            text = self.text()
        except ValueError as exc:
            raise WriteError(self.path, str(exc)) from None
        ensure_directory(os.path.dirname(self.path), 0o755)
        if write_atomic(self.path, text.encode(), 0o644):
            return Outcome(changed=True, detail=os.path.basename(self.path))
        return Outcome(changed=False)
