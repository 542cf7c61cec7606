"""The wanted set and the installed set in, the difference out. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_certd.core.model import FileVerdict, InstalledCA, Plan, TrustedCA

# Every file edge-certd writes in ca_dir matches this; nothing else there is ever touched.
OWNED_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{16}\.crt$")
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CN = re.compile(r"(?:^|,)CN=((?:[^,\\]|\\.)*)")


def file_name(ca: TrustedCA) -> str:
    """`<slug of the subject CN>-<first 16 hex of the SHA-256>.crt`, from [A-Za-z0-9._-]."""
    match = _CN.search(ca.subject)
    label = match.group(1) if match else ca.subject
    slug = _SLUG_UNSAFE.sub("-", label.replace("\\", "")).strip("-._")[:64].strip("-._")
    return f"{slug or 'ca'}-{ca.sha256[:16]}.crt"


@dataclass(frozen=True, kw_only=True)
class Held:
    """A CA kept because the sources that provided it cannot be read right now."""

    ca: TrustedCA
    sources: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Wanted:
    """What should be trusted, by SHA-256, and which sources provide each CA."""

    cas: Mapping[str, TrustedCA]
    sources: Mapping[str, tuple[str, ...]]
    # CAs an operator removed (`edge-certd remove`) that a source still provides.
    stay_removed: Mapping[str, tuple[str, ...]]

    def managed(self) -> list[TrustedCA]:
        return [self.cas[sha] for sha in sorted(self.cas)]


def wanted_set(
    verdicts: Sequence[FileVerdict], *, removed_by_operator: frozenset[str], held: Mapping[str, Held]
) -> Wanted:
    """Every accepted CA, less those an operator removed, plus those held for sources that
    cannot be read right now (an unsafe directory, a file being rewritten)."""
    cas: dict[str, TrustedCA] = {}
    sources: dict[str, list[str]] = {}
    for verdict in verdicts:
        for ca in verdict.accepted:
            cas.setdefault(ca.sha256, ca)
            sources.setdefault(ca.sha256, []).append(verdict.source)
    stay_removed = {sha: tuple(sources.pop(sha)) for sha in sorted(removed_by_operator & set(cas))}
    for sha in stay_removed:
        del cas[sha]
    for sha, kept in held.items():
        cas.setdefault(sha, kept.ca)
        sources.setdefault(sha, []).extend(kept.sources)
    return Wanted(
        cas=cas, sources={sha: tuple(sorted(set(s))) for sha, s in sources.items()}, stay_removed=stay_removed
    )


def make_plan(wanted: Mapping[str, TrustedCA], present: Mapping[str, InstalledCA]) -> Plan:
    """What to write and what to remove so that `present` becomes `wanted`.

    Both are keyed by SHA-256 fingerprint, which is each CA's identity.
    """
    add = tuple(wanted[sha] for sha in sorted(wanted) if sha not in present)
    remove = tuple(present[sha] for sha in sorted(present) if sha not in wanted)
    return Plan(add=add, remove=remove)
