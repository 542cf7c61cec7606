"""What the one-shot commands do: inspect, add, remove, sync. Errors propagate to the CLI."""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_certd.config import Config
from edge_certd.core.errors import NotFound, UsageError
from edge_certd.core.judgement import JudgeRequest, unreadable
from edge_certd.core.model import FileVerdict, InstalledCA, SourceKind, SyncResult
from edge_certd.core.text import printable
from edge_certd.store.fsutil import write_atomic
from edge_certd.store.sources import SourceFile, read_entry
from edge_certd.store.state import load_blocked, load_manifest, save_blocked, state_lock
from edge_certd.sync.engine import Engine, judge_context
from edge_certd.worker.pool import JudgeWorker

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# A file name in the drop directory stays well inside NAME_MAX (255 bytes), with room for
# the "-N" that keeps two different files apart: a client's 5,000-character name must not
# turn into ENAMETOOLONG at write time.
MAX_STEM = 120
# A name as it is shown (journal, STATUS=, status.json, replies): long enough to recognise.
MAX_SHOWN_NAME = 256
# What `remove` accepts as NAME: a SHA-256 prefix, a file name or a path's last part.
MAX_WHAT = 255


def sync(config: Config) -> SyncResult:
    return Engine(config).sync()


def inspect(config: Config, files: Sequence[str], keyvault: bool = False) -> list[FileVerdict]:
    """Judge files the way sync would, without installing anything."""
    return [verdict for _, verdict in _judge_files(config, files, keyvault)]


def judge_as_drop(config: Config, files: Sequence[str]) -> list[FileVerdict]:
    """Judge files as if dropped, wherever they are (a Key Vault export directory too)."""
    return [verdict for _, verdict in _judge_files(config, files, as_drop=True)]


def require_files(files: Sequence[str]) -> None:
    """The one wording for a FILE argument that is not there (verify's --ca says it too).

    Raises:
        NotFound: "<FILE>: no such file", for the first one missing.
    """
    for path in files:
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{printable(path)}: no such file") from None
        except OSError:
            continue  # not "missing": opening it names the real reason (permission denied)


def _judge_files(
    config: Config, files: Sequence[str], keyvault: bool = False, as_drop: bool = False
) -> list[tuple[SourceFile, FileVerdict]]:
    """Read each file once and judge those bytes in the judge."""
    require_files(files)
    context = judge_context(config, dt.datetime.now(dt.UTC))
    kv_dirs = {os.path.realpath(d) for d in config.keyvault_export_dirs}
    judged = []
    worker = JudgeWorker()
    try:
        for path in files:
            directory = os.path.dirname(os.path.abspath(path))
            in_keyvault = not as_drop and (keyvault or os.path.realpath(directory) in kv_dirs)
            kind = SourceKind.KEYVAULT if in_keyvault else SourceKind.DROP
            source = _read_one(path, config.policy.max_file_bytes)
            # Named as sync names sources: a newline, an escape or a byte that is not UTF-8
            # in a file name must neither forge an output line nor crash print().
            shown = printable(path, limit=MAX_SHOWN_NAME)
            if source.data is None:
                verdict = unreadable(shown, source.problem)
            else:
                request = JudgeRequest(source=shown, data=source.data, kind=kind)
                (judgement,) = worker.judge([request], context)
                verdict = judgement.verdict
            judged.append((source, verdict))
    finally:
        worker.close()
    return judged


@dataclass(frozen=True, kw_only=True)
class Added:
    """What `add` did: its own files' verdicts, and the sync that followed."""

    verdicts: tuple[FileVerdict, ...]
    result: SyncResult


def add(config: Config, files: Sequence[str]) -> Added:
    """Validate each file, then place it in the drop directory atomically and sync.

    Raises:
        UsageError: a file would be rejected or holds no CA; nothing is copied then.
    """
    judged = _judge_files(config, files)
    items = [(path, source.data or b"") for path, (source, _) in zip(files, judged, strict=True)]
    engine = Engine(config)
    return add_judged(engine, items, [verdict for _, verdict in judged])


def add_judged(engine: Engine, items: Sequence[tuple[str, bytes]], verdicts: Sequence[FileVerdict]) -> Added:
    """Copy already judged bytes into the drop directory and sync (the daemon's path too:
    it judges what a client sent and calls this).

    Raises:
        UsageError: a file would be rejected or holds no CA; nothing is copied then.
    """
    config = engine.config
    refused = [v for v in verdicts if v.rejected or not v.accepted]
    if refused:
        lines = []
        for verdict in refused:
            reasons = [r.describe() for r in verdict.rejected] or [
                f"{verdict.source}: holds no CA certificate"
            ]
            lines.extend(reasons)
        raise UsageError("nothing was added:\n  " + "\n  ".join(lines))
    engine.ensure_drop_dir(force=True)
    with state_lock(engine.paths):
        for name, data in items:
            # The bytes judged above, not a second read that a swapped file could change.
            target = _drop_target(config.drop_dir, name, data, config.policy.max_file_bytes)
            write_atomic(target, data, 0o644)
        blocked = load_blocked(engine.paths)
        again = {ca.sha256 for v in verdicts for ca in v.accepted}
        if blocked & again:
            save_blocked(engine.paths, blocked - again)
    return Added(verdicts=tuple(verdicts), result=engine.sync())


def judge_items(config: Config, worker: JudgeWorker, items: Sequence[tuple[str, bytes]]) -> list[FileVerdict]:
    """Judge bytes a client sent, named as the client named them (escaped)."""
    context = judge_context(config, dt.datetime.now(dt.UTC))
    requests = [
        JudgeRequest(source=printable(name, limit=MAX_SHOWN_NAME), data=data, kind=SourceKind.DROP)
        for name, data in items
    ]
    return [judgement.verdict for judgement in worker.judge(requests, context)]


MAX_NEAR = 3  # near matches a failed `remove NAME` lists


def remove(config: Config, what: str, engine: Engine | None = None) -> SyncResult:
    """Stop trusting a managed CA, named by SHA-256 prefix or by installed/source file name.

    The source file is left where it is (edge-certd never deletes sources); the CA is
    remembered as removed until `add` brings it back. The daemon passes its own engine, so
    the sync that follows uses its warm judge worker and keeps its watchdog fed.

    Raises:
        NotFound: nothing managed matches. UsageError: more than one CA matches, or NAME
            is longer than any name edge-certd gives.
    """
    if len(what) > MAX_WHAT:
        raise UsageError(
            f"NAME is {len(what)} characters long; a SHA-256 prefix or a file name has at most {MAX_WHAT}"
        )
    engine = engine or Engine(config)
    entries = load_manifest(engine.paths).entries
    needle = what.lower()
    matches = [
        e
        for e in entries.values()
        if (len(needle) >= 6 and e.sha256.startswith(needle))
        or what in (os.path.basename(e.path), *(os.path.basename(s) for s in e.sources))
    ]
    if not matches:
        raise NotFound(_no_match(what, entries.values()))
    if len(matches) > 1:
        names = ", ".join(f"{m.sha256[:16]} ({m.subject})" for m in matches)
        raise UsageError(
            f"{printable(repr(what))} matches more than one CA: {names}; give more of the SHA-256"
        )
    with state_lock(engine.paths):
        save_blocked(engine.paths, load_blocked(engine.paths) | {matches[0].sha256})
    return engine.sync()


def _no_match(what: str, entries: Iterable[InstalledCA]) -> str:
    """What NAME may be, and the managed CAs whose names come close (difflib's ratio)."""
    names: dict[str, InstalledCA] = {}
    for entry in entries:
        for name in (os.path.basename(entry.path), *(os.path.basename(s) for s in entry.sources)):
            names[name] = entry
        names[entry.sha256[:16]] = entry
        names[entry.subject] = entry
    near = difflib.get_close_matches(what, list(names), n=MAX_NEAR, cutoff=0.5)
    shown = list(dict.fromkeys(f"{names[n].sha256[:16]} ({names[n].subject})" for n in near))
    hint = f"; near matches: {', '.join(shown)}" if shown else ""
    return (
        f"no managed CA matches {printable(what, 80)!r}: NAME is a file name (the installed "
        "<CN slug>-<sha256[:16]>.crt or a source file's name) or a SHA-256 prefix of at least "
        f"6 hex digits, not the subject{hint}; `edge-certd list` shows every managed CA"
    )


def _read_one(path: str, max_bytes: int) -> SourceFile:
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open its directory ({exc.strerror})") from None
    try:
        return read_entry(directory, os.path.realpath(directory), dir_fd, name, max_bytes)
    finally:
        os.close(dir_fd)


def _drop_target(drop_dir: str, path: str, data: bytes, max_bytes: int) -> str:
    """A safe name in drop_dir; never overwrites a different file already there.

    What is already there is read as sync reads sources (no FIFO, device or symlink out of
    the directory is followed): a technician may plant anything in the drop directory.
    """
    stem = _SAFE_NAME.sub("-", os.path.basename(path)).lstrip(".-") or "ca.pem"
    if len(stem) > MAX_STEM:  # keep the extension, which says what the file holds
        base, ext = os.path.splitext(stem)
        ext = ext if len(ext) <= 16 else ""
        stem = base[: MAX_STEM - len(ext)] + ext
    candidate = os.path.join(drop_dir, stem)
    counter = 1
    while os.path.lexists(candidate):
        if _read_one(candidate, max_bytes).data == data:
            return candidate
        counter += 1
        base, ext = os.path.splitext(stem)
        candidate = os.path.join(drop_dir, f"{base}-{counter}{ext}")
    return candidate
