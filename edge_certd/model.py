"""Plain frozen values that flow between the pure core and the side effects."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrustedCA:
    """A CA certificate that passed policy. Its identity is `sha256`."""

    sha256: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes = field(repr=False)


@dataclass(frozen=True)
class Rejection:
    """Why a file, or one certificate in it, will not be trusted.

    `code` is stable (for scripts and the journal); `message` is for a technician.
    """

    source: str
    code: str
    message: str
    subject: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        who = f" certificate {self.subject}" if self.subject else ""
        return f"{self.source}:{who} rejected ({self.code}): {self.message}"


@dataclass(frozen=True)
class Ignored:
    """Something a file held that is expected and skipped, such as a leaf next to its chain."""

    source: str
    what: str


@dataclass(frozen=True)
class FileVerdict:
    """Everything learned about one source file."""

    source: str
    format: str
    accepted: tuple[TrustedCA, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    ignored: tuple[Ignored, ...] = ()
    content_sha256: str = ""


@dataclass(frozen=True)
class InstalledCA:
    """A manifest entry: a CA edge-certd has installed and where it came from."""

    sha256: str
    subject: str
    not_after: dt.datetime
    not_before: dt.datetime
    path: str
    sources: tuple[str, ...]
    installed_at: dt.datetime


@dataclass(frozen=True)
class Plan:
    """The difference between what is wanted and what is installed."""

    add: tuple[TrustedCA, ...] = ()
    remove: tuple[InstalledCA, ...] = ()

    @property
    def changes_trust(self) -> bool:
        return bool(self.add or self.remove)
