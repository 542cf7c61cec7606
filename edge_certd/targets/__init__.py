"""Trust targets. Each one answers two questions behind the same tiny interface:

- `installed()`: which CAs (by SHA-256) does this target hold right now?
- `apply(managed, plan)`: make it hold exactly `managed`; say whether anything changed.

`system` is the OS store, `bundles` the per-runtime PEM files and env file, `java` the
Java truststore. `sync` calls them in that order, because the later ones copy the system
bundle that the first one rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_certd.model import Plan, TrustedCA


@dataclass(frozen=True)
class Outcome:
    changed: bool
    detail: str = ""


class Target(Protocol):
    name: str

    def installed(self) -> frozenset[str]: ...

    def apply(self, managed: Sequence[TrustedCA], plan: Plan) -> Outcome: ...
