"""Plain frozen values that flow between the pure core and the side effects.

Every dataclass is keyword-only: several fields share a type (two datetimes, two strings),
and a positional call that swaps them would still type-check. The ones a sync holds one of
per file use slots: a directory of 50,000 junk files must not cost 50,000 dicts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a file, or one certificate in it, is not trusted. Stable: scripts, the journal's
    REASON field and the man page use these values."""

    # what a file is
    UNREADABLE = "unreadable"
    UNPARSEABLE = "unparseable"
    PKCS12_PASSWORD = "pkcs12_password"
    THUMBPRINT_MISMATCH = "thumbprint_mismatch"
    PRIVATE_KEY = "private_key"
    PKCS12_SEALED = "pkcs12_sealed"  # a PFX no password opens, in the drop directory
    TOO_COSTLY = "too_costly"  # a PFX iteration count or a JSON depth over its ceiling
    JUDGE_FAILED = "judge_failed"  # an internal error while judging this one file
    TOO_LARGE = "too_large"
    NOT_REGULAR_FILE = "not_regular_file"
    HARD_LINK = "hard_link"
    DANGLING_SYMLINK = "dangling_symlink"
    SYMLINK_LOOP = "symlink_loop"
    SYMLINK_OUTSIDE = "symlink_outside"
    UNSAFE_MODE = "unsafe_mode"  # others may write it: a roots package's file not root's alone
    # judging itself
    JUDGE_LIMIT = "judge_limit"  # judging exceeded its CPU, memory or time budget
    # what a certificate is (policy)
    NOT_CA = "not_ca"
    NOT_SELF_SIGNED = "not_self_signed"
    BAD_SIGNATURE = "bad_signature"
    WEAK_KEY = "weak_key"
    UNSUPPORTED_KEY = "unsupported_key"
    WEAK_SIGNATURE = "weak_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    CRITICAL_EXTENSION = "critical_extension"  # OpenSSL refuses a critical one it cannot read
    NO_CERT_SIGN = "no_cert_sign"  # keyUsage present without keyCertSign
    TRUST_SETTINGS = "trust_settings"  # a TRUSTED CERTIFICATE whose settings forbid TLS servers


_KEY_CODES = frozenset({Reason.PRIVATE_KEY, Reason.PKCS12_SEALED})


class SourceKind(StrEnum):
    """Where a file came from decides what it may hold."""

    DROP = "drop"  # a technician's copy: a private key refuses the whole file
    KEYVAULT = "keyvault"  # an export: keys, leaves and intermediates are expected


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustedCA:
    """A CA certificate that passed policy. Its identity is `sha256`."""

    sha256: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """Why a file, or one certificate in it, will not be trusted.

    `code` is stable (for scripts and the journal); `message` is for a technician.
    """

    source: str
    code: Reason
    message: str
    subject: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        who = f" certificate {self.subject}" if self.subject else ""
        return f"{self.source}:{who} rejected ({self.code}): {self.message}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Ignored:
    """Something a file held that is expected and skipped, such as a leaf next to its chain."""

    source: str
    what: str


# What a file was read as (`FileVerdict.format`), as `inspect` and `status` print it.
FORMAT_LABELS = {
    "pem": "PEM",
    "der": "DER certificate",
    "pkcs7-pem": "PKCS#7 (PEM)",
    "pkcs7-der": "PKCS#7 (DER)",
    "pkcs12": "PKCS#12 / PFX",
    # `az keyvault secret download` writes a PFX secret's base64 value as text by default;
    # `-e base64` decodes it, which gives the binary "pkcs12" above.
    "pkcs12-base64": "PKCS#12 / PFX as base64 text (az keyvault secret download)",
    "keyvault-certificate-json": "Key Vault certificate JSON (az keyvault certificate show)",
    "keyvault-secret-json": "Key Vault secret JSON (az keyvault secret show)",
    "private-key": "private key",
    "unknown": "unrecognised",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class FileVerdict:
    """Everything learned about one source file."""

    source: str
    format: str
    accepted: tuple[TrustedCA, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    ignored: tuple[Ignored, ...] = ()
    content_sha256: str = ""

    @property
    def leaks_private_key(self) -> bool:
        """The file holds, or may hold, a private key: the sync tightens its mode to 0600.

        A PKCS#12 that no password opens counts: nobody can tell that it holds no key.
        """
        return any(r.code in _KEY_CODES for r in self.rejected)


@dataclass(frozen=True, kw_only=True, slots=True)
class InstalledCA:
    """A manifest entry: a CA edge-certd has installed and where it came from."""

    sha256: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    path: str
    sources: tuple[str, ...]
    installed_at: dt.datetime


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The difference between what is wanted and what is installed."""

    add: tuple[TrustedCA, ...] = ()
    remove: tuple[InstalledCA, ...] = ()

    @property
    def changes_trust(self) -> bool:
        return bool(self.add or self.remove)


@dataclass(frozen=True, kw_only=True)
class SourceProblem:
    """A source directory that cannot be read safely; what it provided before is kept."""

    path: str
    reason: str

    def describe(self) -> str:
        return f"source directory {self.path}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class LastChange:
    """When trust last changed, and by how much."""

    time: dt.datetime
    added: int
    removed: int


@dataclass(frozen=True, kw_only=True)
class Note:
    """Something a target or the sync wants a person to know; `code` keys the journal."""

    code: str
    message: str


@dataclass(frozen=True, kw_only=True)
class GatewayHold:
    """A CA whose sources are gone, kept because the gateway's last probe still anchors at
    it (core/hold.py decides; `gateway.grace_days`)."""

    sha256: str
    subject: str
    gateway: str  # host:port of the probe that anchored at it when the hold began
    since: dt.datetime
    until: dt.datetime
    sources: tuple[str, ...] = ()  # what provided it before it went away


@dataclass(frozen=True, kw_only=True)
class TargetFailure:
    """A target that could not take this sync's change; the others did. Retried next sync."""

    target: str
    message: str


@dataclass(frozen=True, kw_only=True)
class FoldedRejections:
    """Rejected files a sync counted instead of keeping (`sync/judging.py`): each refused
    for one reason, with no certificate and no key in it, past the first ones kept whole.
    50,000 junk files would otherwise hold about 20 MB of verdicts until the sync ends."""

    by_reason: Mapping[str, int] = field(default_factory=dict)  # files per reason code
    keys: Sequence[int] = ()  # their journal keys (sync/journal_events.py): said once each

    @property
    def files(self) -> int:
        return sum(self.by_reason.values())


@dataclass(frozen=True, kw_only=True)
class SyncResult:
    """Everything one sync learned and did: the one input for status.json, the journal,
    the daemon's STATUS= line and the CLI's summary."""

    time: dt.datetime
    verdicts: tuple[FileVerdict, ...] = ()
    source_problems: tuple[SourceProblem, ...] = ()
    added: tuple[TrustedCA, ...] = ()
    removed: tuple[InstalledCA, ...] = ()
    managed: Mapping[str, InstalledCA] = field(default_factory=dict)
    update_summary: str = ""
    changed_files: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()
    target_failures: tuple[TargetFailure, ...] = ()
    removed_by_operator: tuple[str, ...] = ()  # SHA-256s `edge-certd remove` took away
    last_change: LastChange | None = None
    error: str | None = None  # set when trust could not be applied; the old state stays
    # Sources the judge could not judge (not their fault): held as they were, judged again.
    judge_unavailable: tuple[str, ...] = ()
    # CAs whose sources are gone, kept while the gateway still anchors at them (core/hold.py).
    held_for_gateway: tuple[GatewayHold, ...] = ()
    # Rejected files counted, not kept in `verdicts` (each one rejection).
    folded: FoldedRejections = field(default_factory=FoldedRejections)

    @property
    def rejected(self) -> tuple[Rejection, ...]:
        """The rejections kept whole; `rejected_count` counts the folded ones too."""
        return tuple(r for v in self.verdicts for r in v.rejected)

    @property
    def rejected_count(self) -> int:
        return sum(len(v.rejected) for v in self.verdicts) + self.folded.files

    @property
    def rejected_files(self) -> int:
        return sum(1 for v in self.verdicts if v.rejected) + self.folded.files

    @property
    def trust_changed(self) -> bool:
        return bool(self.added or self.removed)
