"""What one judgement takes: the file, the rules, the clock and the limits. Pure.

Apart from the judging itself (`core.verdict`, `core.policy`), so that the daemon, which only
sends these to the judge and reads its answers, never loads cryptography (issue 24: about
4 MB of the idle daemon's memory).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from edge_certd.core.model import FileVerdict, Reason, Rejection, SourceKind

# Bump whenever judging changes what any input gives: the verdict cache is keyed by it, so
# verdicts an older judge gave are not answered from the cache after an upgrade.
JUDGE_VERSION = 3


@dataclass(frozen=True, kw_only=True)
class Rules:
    """The policy knobs from the configuration, as plain values."""

    allow_intermediate: bool = False
    allow_expired: bool = False
    min_rsa_bits: int = 2048
    allow_sha1_signature: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class JudgeLimits:
    """What judging one request may cost: policy.judge_cpu_seconds and judge_memory_mb.

    They travel in every request, so a reload with new limits reaches the judge at once.
    """

    cpu_seconds: int = 5
    memory_mb: int = 256

    @property
    def wall_seconds(self) -> float:
        # CPU time is what the file may use; wall time also covers a judge that waits (a
        # loaded machine, a stopped process) rather than computes. Past it the judgement is
        # given up, but not blamed on the file.
        return self.cpu_seconds * 3 + 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class JudgeContext:
    """What every file of one sync is judged against."""

    rules: Rules
    now: dt.datetime  # aware UTC
    passwords: tuple[bytes, ...] = ()  # PKCS#12 passwords to try
    limits: JudgeLimits = JudgeLimits()


@dataclass(frozen=True, kw_only=True, slots=True)
class JudgeRequest:
    """One file's bytes to judge, named as messages name it."""

    source: str
    data: bytes
    kind: SourceKind  # DROP or KEYVAULT


def unreadable(source: str, problem: tuple[Reason, str] | None) -> FileVerdict:
    """The verdict on a file that could not be read: `problem` is (code, message)."""
    code, message = problem or (Reason.UNREADABLE, "cannot be read")
    return FileVerdict(
        source=source, format="unknown", rejected=(Rejection(source=source, code=code, message=message),)
    )
