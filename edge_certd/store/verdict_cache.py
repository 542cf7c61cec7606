"""Remember verdicts by file content, so an unchanged file is not parsed and verified again.

Judging a root costs a public-key decode and a signature check (about 0.4 ms with OpenSSL 3);
with 1,000 managed CAs that was most of a restart and of every sync the daemon ran. The
cache is keyed by the SHA-256 of the file's bytes, the source kind, the policy, the PFX
passwords, the judge's limits (a `judge_limit` verdict is the file's fault under those
limits only) and the judge itself (core's JUDGE_VERSION and the package version, so verdicts
an older release gave are judged again after an upgrade), and lives in state_dir
(root-only), so a hit is exactly the verdict a fresh judgement would give, except for the
clock: verdicts are re-checked against `now` and judged again when a date boundary was
crossed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict
from typing import Any

from edge_certd import __version__
from edge_certd.core.codec import verdict_from_json, verdict_to_json
from edge_certd.core.judgement import JUDGE_VERSION, JudgeContext
from edge_certd.core.model import FileVerdict, Reason
from edge_certd.store.fsutil import read_bytes, write_atomic

CACHE_NAME = "verdict-cache.json"
# Rejections that depend on the clock, or on this run (an internal error may be a MemoryError
# that will not recur); such verdicts are never cached.
_UNCACHED_CODES = {Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.JUDGE_FAILED}
_VERSION = 1


class VerdictCache:
    def __init__(self, state_dir: str, context: JudgeContext) -> None:
        self.path = os.path.join(state_dir, CACHE_NAME)
        judge = {"judge_version": JUDGE_VERSION, "edge_certd": __version__}
        parts = [judge, asdict(context.rules), asdict(context.limits)]
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
        for password in context.passwords:
            digest.update(hashlib.sha256(password).digest())
        self._context = digest.hexdigest()[:32]
        self._old = self._load()
        self._new: dict[str, Any] = {}

    def key(self, content_sha256: str, kind: str) -> str:
        return f"{content_sha256}:{kind}:{self._context}"

    def get(self, key: str, source: str, now: dt.datetime) -> FileVerdict | None:
        """The cached verdict with `source` filled in, or None when it must be judged."""
        item = self._old.get(key) or self._new.get(key)
        if item is None:
            return None
        try:
            verdict = verdict_from_json(item, source)
        except (KeyError, TypeError, ValueError):
            return None
        for ca in verdict.accepted:
            if not ca.not_before <= now <= ca.not_after:
                return None  # the clock crossed a boundary: judge it properly again
        self._new[key] = item
        return verdict

    def put(self, key: str, verdict: FileVerdict) -> None:
        if any(r.code in _UNCACHED_CODES for r in verdict.rejected):
            return
        self._new[key] = verdict_to_json(verdict)

    def save(self) -> None:
        """Keep exactly the entries this sync used; written only when that set changed."""
        if self._new.keys() == self._old.keys():
            return
        doc = {"version": _VERSION, "entries": self._new}
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode(), 0o600)
        self._old = dict(self._new)

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(read_bytes(self.path) or b"{}")
        except (OSError, ValueError):
            return {}  # a damaged cache only costs time
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            return {}
        entries = doc.get("entries")
        return entries if isinstance(entries, dict) else {}
