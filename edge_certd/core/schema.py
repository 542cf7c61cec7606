"""The `schema_version` of each `--json` document. Pure.

Each document has a JSON Schema in edge_certd/schemas/<name>.schema.json (installed to
/usr/share/edge-certd/schemas/). The version changes only when a consumer written for the
old one could misread the new one: a key removed or renamed, a type or a meaning changed. A
new key, or a new value of an open set (a reason code), keeps the version. README.md,
"Versioned JSON", says the same for consumers.
"""

from __future__ import annotations

from typing import Final

# status 2: daemon.status_line also carries the gateway watch's words, and daemon.gateway holds
# its last probe of each endpoint (a consumer that matched the whole line would misread it).
SCHEMA_VERSIONS: Final[dict[str, int]] = {"list": 1, "status": 2, "verify": 1, "doctor": 1}

__all__ = ["SCHEMA_VERSIONS"]
