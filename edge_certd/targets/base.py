"""The one interface every trust target implements (certbot's installer shape, cut down).

- `apply(change)`: make the target hold exactly `change.managed`; say what changed.
- `holdings()`: what the target holds now, for `doctor` to compare with the manifest.
- `env()`: the variables the target contributes to the env file.

Targets never log: what a person should know comes back as `Outcome.notes`, and the sync
logs it in one place. They raise only `ApplyError` subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_certd.core.model import Note, Plan, TrustedCA


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


class Target(Protocol):
    name: str

    def apply(self, change: Change) -> Outcome: ...

    def holdings(self) -> tuple[Holding, ...]: ...

    def env(self) -> tuple[tuple[str, str], ...]: ...
