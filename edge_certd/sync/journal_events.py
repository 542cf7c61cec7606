"""What a sync tells the journal: installs, removals, notes, and each problem once.

"Once" needs a memory across syncs and processes (the daemon, the CLI): the problems
logged by the last sync are kept in `journal-memory` in the state directory, read and
written under the state lock. A problem still present is not logged again; one that went
away and came back is. The memory is a sorted array of 64-bit digests, searched in place:
50,000 junk files make a 400 KB file and no Python object per problem.
"""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from bisect import bisect_left
from collections.abc import Container

from edge_certd.core.errors import ApplyError, EdgeCertdError
from edge_certd.core.model import SyncResult
from edge_certd.core.text import plural
from edge_certd.store.fsutil import read_bytes_quietly, write_atomic
from edge_certd.store.state import StatePaths
from edge_certd.sync import journal

MEMORY_NAME = "journal-memory"
# Past this many rejections in one sync the rest are summed up in one line (a directory of
# 50,000 junk files must not become 50,000 journal lines).
MAX_REJECTION_EVENTS = 100

# Notes that deserve a journal line, with their event kind and level; the rest are for the
# CLI's summary only.
_JOURNALED_NOTES = {
    "manifest_corrupt": ("source_error", logging.WARNING),
    "java_keystore_refresh_failed": ("update_failed", logging.WARNING),
    "clock_behind": ("expiring", logging.WARNING),
    "java_refused": ("update_failed", logging.WARNING),
    "stays_removed": ("rejected", logging.WARNING),
    "judge_unavailable": ("judge_unavailable", logging.WARNING),
}


def log_sync(result: SyncResult, paths: StatePaths) -> None:
    """Emit one journal event per change and note, and per problem that is new."""
    for ca in result.added:
        source = ", ".join(result.managed[ca.sha256].sources)
        journal.emit(
            "installed",
            f'installed root CA "{ca.subject}" (sha256 {ca.sha256[:16]}…) from {source}',
            sha256=ca.sha256,
            subject=ca.subject,
            source=source,
        )
    for gone in result.removed:
        why = (
            "edge-certd remove took it away; its source file is left where it is"
            if gone.sha256 in result.removed_by_operator
            else "no source provides it any more"
        )
        journal.emit(
            "removed",
            f'removed root CA "{gone.subject}" (sha256 {gone.sha256[:16]}…): {why}',
            sha256=gone.sha256,
            subject=gone.subject,
        )
    memory_path = os.path.join(paths.state_dir, MEMORY_NAME)
    logged = said(paths)
    now_notes = array("Q")
    for note in result.notes:
        if note.code in _JOURNALED_NOTES:
            key = _key("note", note.code, note.message)
            now_notes.append(key)
            if key in logged:
                continue  # still true, already said
            event, level = _JOURNALED_NOTES[note.code]
            journal.emit(event, note.message, level, reason=note.code)
    now_rejected = array("Q")
    emitted = unlogged = 0
    for verdict in result.verdicts:
        for rej in verdict.rejected:
            key = rejection_key(rej.source, verdict.content_sha256, rej.code)
            now_rejected.append(key)
            if key in logged:
                continue  # logged when this content first arrived; status still lists it
            if emitted >= MAX_REJECTION_EVENTS:
                unlogged += 1
                continue
            emitted += 1
            leak = verdict.leaks_private_key
            journal.emit(
                "private_key" if leak else "rejected",
                rej.describe(),
                logging.ERROR if leak else logging.WARNING,
                sha256=rej.sha256,
                subject=rej.subject,
                source=rej.source,
                reason=rej.code,
            )
    # Folded files (sync/judging.py) are never among the first new ones: only counted.
    for key in result.folded.keys:
        now_rejected.append(key)
        if key not in logged:
            unlogged += 1
    if unlogged:
        journal.emit(
            "rejected",
            f"{plural(unlogged, 'more new rejection')} not logged one by "
            "one; `edge-certd status --json` counts them by reason",
            logging.WARNING,
            reason="many_rejections",
        )
    now_problems = array("Q")
    for problem in result.source_problems:
        key = _key("source_error", problem.path, problem.reason)
        now_problems.append(key)
        if key in logged:
            continue  # still the same problem; status keeps showing it
        journal.emit(
            "source_error", problem.describe(), logging.WARNING, source=problem.path, reason=problem.reason
        )
    for failure in result.target_failures:
        journal.emit(
            "update_failed",
            f"{failure.target} not updated, retried at the next sync: {failure.message}",
            logging.ERROR,
            reason=f"{failure.target}_failed",
        )
    if result.trust_changed:
        journal.emit(
            "synced",
            f"trust updated: {len(result.added)} added, "
            f"{len(result.removed)} removed; {plural(len(result.managed), 'CA')} trusted",
        )
    _save(memory_path, now_rejected + now_problems + now_notes)


def log_failure(result: SyncResult, error: ApplyError) -> None:
    journal.emit(
        "update_failed", f"trust not updated, previous state kept: {error}", logging.ERROR, reason=str(error)
    )
    for note in result.notes:
        if note.code in _JOURNALED_NOTES:
            event, level = _JOURNALED_NOTES[note.code]
            journal.emit(event, note.message, level, reason=note.code)


def said(paths: StatePaths) -> Container[int]:
    """The keys the journal memory holds: what the last sync already said."""
    return _Memory(read_bytes_quietly(os.path.join(paths.state_dir, MEMORY_NAME)) or b"")


def rejection_key(source: str, content_sha256: str, code: str) -> int:
    """The memory's key for one rejection of one file's content."""
    return _key("rejected", source, content_sha256, str(code))


def _key(*parts: str) -> int:
    """A 64-bit digest per problem: the memory stays small for 50,000 junk files, and it
    holds no file names."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big")


class _Memory:
    """Membership in a sorted array of digests, by bisection over the file's bytes."""

    def __init__(self, data: bytes) -> None:
        usable = len(data) - len(data) % 8
        self._keys = memoryview(data[:usable]).cast("Q") if usable else memoryview(b"").cast("Q")

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        index = bisect_left(self._keys, key)  # type: ignore[call-overload]
        return index < len(self._keys) and self._keys[index] == key


def _save(path: str, keys: array[int]) -> None:
    data = array("Q", sorted(keys)).tobytes()
    try:
        write_atomic(path, data, 0o600)
    except EdgeCertdError:
        pass  # a full disk costs a repeated journal line at worst
