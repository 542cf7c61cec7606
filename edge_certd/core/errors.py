"""Error types. Each carries what a person needs to act; only the CLI maps them to exit codes."""

from __future__ import annotations

from collections.abc import Sequence


class EdgeCertdError(Exception):
    """Base class for every error edge-certd raises on purpose."""


class ConfigError(EdgeCertdError):
    """The configuration file is missing, unreadable or invalid.

    The message names the file, the key path and what is wrong.
    """

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        joined = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"invalid configuration {path}:\n{joined}")


class UsageError(EdgeCertdError):
    """The command line asked for something that cannot be done as asked."""


class SourceError(EdgeCertdError):
    """A source directory cannot be read safely (missing, world-writable, wrong owner)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"source directory {path}: {reason}")


class ApplyError(EdgeCertdError):
    """Trust could not be applied; the previous trust state is still in place."""


class UpdateCommandError(ApplyError):
    """The trust-store update command failed or timed out."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        name = self.argv[0].rsplit("/", 1)[-1] if self.argv else "update command"
        what = f"{name} timed out" if returncode is None else f"{name} failed (exit {returncode})"
        tail = output.strip().splitlines()[-3:]
        detail = ("; " + " | ".join(tail)) if tail else ""
        self.short = what
        super().__init__(what + detail)


class WriteError(ApplyError):
    """A file edge-certd owns could not be written (read-only, disk full, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {path}: {reason}")


class LockTimeout(ApplyError):
    """Another edge-certd process held the state lock for too long."""


class NotFound(EdgeCertdError):
    """A named CA or file does not exist."""
