"""Judging a sync's files: the verdict cache first, then the judge, in batches.

Files arrive one at a time (a directory of 50,000 is never read whole). Cache misses are
held until a batch is full (BATCH_FILES files or BATCH_BYTES bytes) and then judged in one
round trip to the judge; the verdicts come out in the order the files went in. A file the
judge could not judge (not its fault) gets no verdict: it is listed in `unavailable`, and
the sync holds what it provided, as for a file still being written.
"""

from __future__ import annotations

from edge_certd.core.judgement import JudgeContext, JudgeRequest, unreadable
from edge_certd.core.model import FileVerdict, Reason, SourceKind
from edge_certd.store.sources import SourceFile
from edge_certd.store.verdict_cache import VerdictCache
from edge_certd.worker.pool import Judgement, JudgeWorker, Outcome

# Small enough that a batch fits in a pipe's buffer and holds little memory; large enough
# that a round trip per file no longer dominates a directory of junk.
BATCH_FILES = 1024
BATCH_BYTES = 1024 * 1024
# A verdict that took this much CPU time is remembered whatever it says: a flood of costly
# files is paid once (150 sealed PFX files with 1,000,000 MAC iterations took 69 s per sync).
COSTLY_SECONDS = 0.005
# Verdicts whose reason is itself costly to reach, whatever this machine's speed.
_COSTLY_CODES = {Reason.PKCS12_SEALED, Reason.PKCS12_PASSWORD, Reason.TOO_COSTLY, Reason.JUDGE_LIMIT}


class Judging:
    def __init__(self, *, worker: JudgeWorker, cache: VerdictCache, context: JudgeContext) -> None:
        self.worker, self.cache, self.context = worker, cache, context
        self._done: list[FileVerdict | None] = []
        # Files to tighten to 0600: only their names are kept, not one per file judged.
        self.leaking: list[str] = []
        # Sources (named as verdicts name them) the judge could not judge: held, retried.
        self.unavailable: list[str] = []
        self._pending: list[tuple[int, SourceFile, SourceKind, str]] = []
        self._pending_bytes = 0

    def add(self, source: SourceFile, kind: SourceKind) -> None:
        if source.data is None:
            self._record(unreadable(source.path, source.problem), source)
            return
        key = self.cache.key(source.content_sha256, kind)
        cached = self.cache.get(key, source.path, self.context.now)
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
        requests = [
            JudgeRequest(source=source.path, data=source.data or b"", kind=kind)
            for _, source, kind, _ in self._pending
        ]
        judgements = self.worker.judge(requests, self.context)
        for (index, source, _, key), judgement in zip(self._pending, judgements, strict=True):
            if judgement.outcome is Outcome.UNAVAILABLE:
                self.unavailable.append(source.path)  # no verdict, nothing cached
                continue
            self._record(judgement.verdict, source, index)
            if worth_caching(judgement):
                self.cache.put(key, judgement.verdict)
        self._pending, self._pending_bytes = [], 0


def worth_caching(judgement: Judgement) -> bool:
    """Every verdict about the file that cost something to reach is remembered; junk is
    refused in microseconds, and 50,000 junk files must not make a 20 MB cache."""
    verdict = judgement.verdict
    if judgement.outcome is Outcome.UNAVAILABLE:
        return False  # about the judge, not the file
    if judgement.cpu_seconds >= COSTLY_SECONDS or any(r.code in _COSTLY_CODES for r in verdict.rejected):
        return True
    return bool(verdict.accepted or verdict.ignored or any(r.sha256 is not None for r in verdict.rejected))
