"""The wanted set and the installed set in, the difference out. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

from edge_certd.model import InstalledCA, Plan, TrustedCA

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


def make_plan(wanted: Mapping[str, TrustedCA], present: Mapping[str, InstalledCA]) -> Plan:
    """What to write and what to remove so that `present` becomes `wanted`.

    Both are keyed by SHA-256 fingerprint, which is each CA's identity.
    """
    add = tuple(wanted[sha] for sha in sorted(wanted) if sha not in present)
    remove = tuple(present[sha] for sha in sorted(present) if sha not in wanted)
    return Plan(add=add, remove=remove)
