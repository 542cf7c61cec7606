"""Judging a sync's files: the verdict cache first, then the judge, in batches.

Files arrive one at a time (a directory of 50,000 is never read whole). Cache misses are
held until a batch is full (BATCH_FILES files or BATCH_BYTES bytes) and then judged in one
round trip to the judge, while the next batch is read; the verdicts come out in the order
the files went in. A file the judge could not judge (not its fault) gets no verdict: it is
listed in `unavailable`, and the sync holds what it provided, as for a file still being
written.

Junk (a file refused for one reason, with no certificate and no key in it) is kept whole
only for the first KEEP_JUNK files and for the first ones the journal has not heard of
(as many as it names one by one); the rest is folded into counts and journal keys
(`FoldedRejections`), so 50,000 junk files cost a few bytes each, not a verdict each.
What is kept is what status.json lists, the CLI prints and the journal names.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Container

from edge_certd.core.judgement import JudgeContext, JudgeRequest, unreadable
from edge_certd.core.model import FileVerdict, FoldedRejections, Reason, SourceKind
from edge_certd.store.sources import SourceFile
from edge_certd.store.verdict_cache import VerdictCache
from edge_certd.sync.journal_events import MAX_REJECTION_EVENTS, rejection_key
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


# More than status.json lists (record.MAX_LISTED) or the CLI prints (report.MAX_PRINTED).
KEEP_JUNK = 1000


# A file waiting for its verdict: its place among the verdicts, the file, how it is judged,
# and its key in the verdict cache.
_Pending = tuple[int, SourceFile, SourceKind, str]


class Judging:
    def __init__(
        self,
        *,
        worker: JudgeWorker,
        cache: VerdictCache,
        context: JudgeContext,
        said: Container[int] = frozenset(),
    ) -> None:
        """`said`: the journal keys of rejections already logged (journal_events.said)."""
        self.worker, self.cache, self.context, self._said = worker, cache, context, said
        self._done: list[FileVerdict | None] = []
        self._folded_by_reason: Counter[str] = Counter()
        self._folded_keys = array("Q")
        self._junk_kept = self._new_junk_kept = 0
        # Files to tighten to 0600: only their names are kept, not one per file judged.
        self.leaking: list[str] = []
        # Sources (named as verdicts name them) the judge could not judge: held, retried.
        self.unavailable: list[str] = []
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._sent: list[_Pending] = []  # the batch the judge has, its answers not taken yet

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
        self._take_answers()
        return [verdict for verdict in self._done if verdict is not None]

    @property
    def folded(self) -> FoldedRejections:
        """The junk counted instead of kept (valid after `finish`)."""
        return FoldedRejections(by_reason=dict(self._folded_by_reason), keys=self._folded_keys)

    def _record(self, verdict: FileVerdict, source: SourceFile, index: int | None = None) -> None:
        if verdict.leaks_private_key:
            self.leaking.append(source.fs_path)
        elif self._fold(verdict):
            return  # its slot stays None
        if index is None:
            self._done.append(verdict)
        else:
            self._done[index] = verdict

    def _flush(self) -> None:
        """Send the pending batch as soon as the judge has answered the one before it; that
        answer is decoded while the judge works, and the next batch is read meanwhile."""
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        requests = [
            JudgeRequest(source=source.path, data=source.data or b"", kind=kind)
            for _, source, kind, _ in batch
        ]

        def send() -> None:
            self.worker.submit(requests, self.context)
            self._sent = batch

        self._take_answers(then=send)

    def _take_answers(self, then: Callable[[], None] | None = None) -> None:
        batch, self._sent = self._sent, []
        if not batch:
            if then is not None:
                then()
            return
        for (index, source, _, key), judgement in zip(batch, self.worker.collect(then), strict=True):
            if judgement.outcome is Outcome.UNAVAILABLE:
                self.unavailable.append(source.path)  # no verdict, nothing cached
                continue
            self._record(judgement.verdict, source, index)
            if worth_caching(judgement):
                self.cache.put(key, judgement.verdict)

    def _fold(self, verdict: FileVerdict) -> bool:
        """Count `verdict` instead of keeping it, when it is junk past what is kept whole.
        Verdicts come in as batches are answered, so "first" is nearly the files' order."""
        if verdict.accepted or verdict.ignored or len(verdict.rejected) != 1:
            return False
        (rejection,) = verdict.rejected
        if rejection.sha256 is not None or rejection.subject is not None:
            return False  # about a certificate: always shown
        key = rejection_key(rejection.source, verdict.content_sha256, rejection.code)
        new = key not in self._said
        if self._junk_kept < KEEP_JUNK or (new and self._new_junk_kept < MAX_REJECTION_EVENTS):
            self._junk_kept += 1
            self._new_junk_kept += new
            return False
        self._folded_by_reason[str(rejection.code)] += 1
        self._folded_keys.append(key)
        return True


def worth_caching(judgement: Judgement) -> bool:
    """Every verdict about the file that cost something to reach is remembered; junk is
    refused in microseconds, and 50,000 junk files must not make a 20 MB cache."""
    verdict = judgement.verdict
    if judgement.outcome is Outcome.UNAVAILABLE:
        return False  # about the judge, not the file
    if judgement.cpu_seconds >= COSTLY_SECONDS or any(r.code in _COSTLY_CODES for r in verdict.rejected):
        return True
    return bool(verdict.accepted or verdict.ignored or any(r.sha256 is not None for r in verdict.rejected))
