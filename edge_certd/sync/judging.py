"""Judging a sync's files: the verdict cache first, then the judge worker, in batches.

Files arrive one at a time (a directory of 50,000 is never read whole). Cache misses are
held until a batch is full (BATCH_FILES files or BATCH_BYTES bytes) and then judged in one
round trip to the worker; the verdicts come out in the order the files went in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from edge_certd.core.model import FileVerdict, Reason, SourceKind
from edge_certd.core.policy import Rules
from edge_certd.store.sources import SourceFile
from edge_certd.store.verdict_cache import VerdictCache
from edge_certd.worker.pool import JudgeWorker, judge_in_worker

# Small enough that a batch fits in a pipe's buffer and holds little memory; large enough
# that a round trip per file no longer dominates a directory of junk.
BATCH_FILES = 64
BATCH_BYTES = 48 * 1024

# A verdict about the judge rather than the file: judged again by the next process.
_NOT_CACHED = {Reason.JUDGE_LIMIT, Reason.JUDGE_FAILED}


class Judging:
    def __init__(
        self,
        *,
        worker: JudgeWorker,
        cache: VerdictCache,
        rules: Rules,
        now: dt.datetime,
        passwords: Sequence[bytes],
    ) -> None:
        self.worker, self.cache, self.rules, self.now = worker, cache, rules, now
        self.passwords = list(passwords)
        self._done: list[FileVerdict | None] = []
        # Files to tighten to 0600: only their names are kept, not one per file judged.
        self.leaking: list[str] = []
        self._pending: list[tuple[int, SourceFile, SourceKind, str]] = []
        self._pending_bytes = 0

    def add(self, source: SourceFile, kind: SourceKind) -> None:
        if source.data is None:
            verdict = judge_in_worker(
                None,
                source=source.path,
                data=None,
                problem=source.problem,
                kind=kind,
                rules=self.rules,
                now=self.now,
                passwords=self.passwords,
            )
            self._record(verdict, source)
            return
        key = self.cache.key(source.content_sha256, kind)
        cached = self.cache.get(key, source.path, self.now)
        if cached is not None:
            self._record(cached, source)
            return
        self._done.append(None)
        self._pending.append((len(self._done) - 1, source, kind, key))
        self._pending_bytes += len(source.data)
        if len(self._pending) >= BATCH_FILES or self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def finish(self) -> list[FileVerdict]:
        self._flush()
        return [verdict for verdict in self._done if verdict is not None]

    def _record(self, verdict: FileVerdict, source: SourceFile, index: int | None = None) -> None:
        if verdict.leaks_private_key:
            self.leaking.append(source.fs_path)
        if index is None:
            self._done.append(verdict)
        else:
            self._done[index] = verdict

    def _flush(self) -> None:
        if not self._pending:
            return
        files = [(source.path, source.data or b"", kind) for _, source, kind, _ in self._pending]
        verdicts = self.worker.judge_batch(files, rules=self.rules, now=self.now, passwords=self.passwords)
        for (index, source, _, key), verdict in zip(self._pending, verdicts, strict=True):
            self._record(verdict, source, index)
            if _worth_caching(verdict):
                self.cache.put(key, verdict)
        self._pending, self._pending_bytes = [], 0


def _worth_caching(verdict: FileVerdict) -> bool:
    """Only verdicts that cost a certificate's parse and signature check are remembered:
    junk is refused in microseconds, and 50,000 junk files must not make a 20 MB cache."""
    if any(r.code in _NOT_CACHED for r in verdict.rejected):
        return False
    return bool(verdict.accepted or verdict.ignored or any(r.sha256 is not None for r in verdict.rejected))
