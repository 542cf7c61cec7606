"""The one interface every trust target implements (certbot's installer shape, cut down).

- `apply(change)`: make the target hold exactly `change.managed`; say what changed.
- `holdings()`: what the target holds now, for `doctor` to compare with the manifest.
- `env()`: the variables the target contributes to the env file (and, rooted at the mount
  point, to a container: cli/containers.py).
- `stores()`: the files runtimes read trust anchors from, as this target writes them, for
  `verify` to check one by one and `status` to name. `core/truststore.py` reads any of them.

Targets never log: what a person should know comes back as `Outcome.notes`, and the sync
logs it in one place. They raise only `ApplyError` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edge_certd.core.model import Note, Plan, TrustedCA
from edge_certd.core.truststore import StoreKind


@dataclass(frozen=True, kw_only=True)
class Change:
    managed: Sequence[TrustedCA]  # every CA to trust, sorted by SHA-256
    plan: Plan  # what differs from what ca_dir held before this sync


@dataclass(frozen=True, kw_only=True)
class Outcome:
    changed: bool
    detail: str = ""  # what changed, in a few words
    notes: tuple[Note, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Holding:
    """One place the managed CAs must be. `installed` is None when it is not written here."""

    name: str
    location: str
    installed: frozenset[str] | None
    skip_reason: str = ""
    fix: str = ""  # what a technician can do when a CA is missing here


@dataclass(frozen=True, kw_only=True)
class StoreFile:
    """One file a runtime reads its trust anchors from.

    Attributes:
        key: a stable name: "edge-roots", "ca-bundle" or "java" (verify's --json, status).
        title: what a report calls it, e.g. "edge-roots.pem".
        used_by: who reads it, in a few words.
        path: where it is.
        kind: how it is read (core/truststore.certificates).
        directory: a hashed certificate directory OpenSSL also reads beside `path`
            (-CApath); only the system store has one (/etc/ssl/certs on a device).
        password: the truststore's password (JKS, PKCS#12); never printed.
    """

    key: str
    title: str
    used_by: str
    path: str
    kind: StoreKind = "pem"
    directory: str | None = None
    password: str = field(default="", repr=False)


class Target(Protocol):
    name: str

    def apply(self, change: Change) -> Outcome: ...

    def holdings(self) -> tuple[Holding, ...]: ...

    def env(self) -> tuple[tuple[str, str], ...]: ...

    def stores(self) -> tuple[StoreFile, ...]: ...
