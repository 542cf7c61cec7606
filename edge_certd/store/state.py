"""What edge-certd records in state_dir: the manifest, the lock, and two reports.

The manifest is the memory: which CAs edge-certd installed, why, and when trust last
changed. `status.json` (written by each sync, under the lock) and `daemon.json` (written by
the running daemon only) are output for people and scripts; nothing reads them to decide.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_certd.core.errors import LockTimeout, WriteError
from edge_certd.core.model import InstalledCA, LastChange
from edge_certd.core.text import iso, parse_iso
from edge_certd.store.fsutil import (
    ensure_directory,
    read_bytes,
    remove_file,
    remove_stale_temp_files,
    write_atomic,
)

MANIFEST_NAME = "manifest.json"
STATUS_NAME = "status.json"
DAEMON_NAME = "daemon.json"
LOCK_NAME = "lock"
# Present while ca_dir may differ from what the trust store was last built from; a start
# that finds it runs the update command even when the plan is empty (crash recovery).
PENDING_NAME = "update-pending"
# SHA-256s that `edge-certd remove` took away; see load_blocked.
BLOCKED_NAME = "removed-by-operator.json"


@dataclass(frozen=True)
class StatePaths:
    state_dir: str

    @property
    def manifest(self) -> str:
        return os.path.join(self.state_dir, MANIFEST_NAME)

    @property
    def status(self) -> str:
        return os.path.join(self.state_dir, STATUS_NAME)

    @property
    def lock(self) -> str:
        return os.path.join(self.state_dir, LOCK_NAME)

    @property
    def daemon(self) -> str:
        return os.path.join(self.state_dir, DAEMON_NAME)

    @property
    def pending(self) -> str:
        return os.path.join(self.state_dir, PENDING_NAME)


@dataclass(frozen=True, kw_only=True)
class LoadedManifest:
    entries: dict[str, InstalledCA] = field(default_factory=dict)
    last_change: LastChange | None = None
    problem: str | None = None  # set when the file was corrupt and is being rebuilt


def load_manifest(paths: StatePaths) -> LoadedManifest:
    """Read the manifest; a corrupt or truncated one yields an empty result and a problem."""
    try:
        raw = read_bytes(paths.manifest)
    except OSError as exc:
        return LoadedManifest(problem=f"cannot read {paths.manifest}: {exc.strerror}")
    if raw is None:
        return LoadedManifest()
    try:
        doc = json.loads(raw)
        entries = {item["sha256"]: _entry_from_json(item) for item in doc["cas"]}
        change = doc.get("last_change")
        last_change = (
            None
            if change is None
            else LastChange(
                time=parse_iso(change["time"]), added=int(change["added"]), removed=int(change["removed"])
            )
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return LoadedManifest(
            problem=f"{paths.manifest} is corrupt ({type(exc).__name__}); "
            "rebuilding it from the CA directory and the sources"
        )
    return LoadedManifest(entries=entries, last_change=last_change)


def save_manifest(
    paths: StatePaths, entries: Mapping[str, InstalledCA], last_change: LastChange | None
) -> bool:
    doc: dict[str, Any] = {"version": 1, "cas": [_entry_to_json(entries[sha]) for sha in sorted(entries)]}
    if last_change is not None:
        doc["last_change"] = {
            "time": iso(last_change.time),
            "added": last_change.added,
            "removed": last_change.removed,
        }
    return write_atomic(paths.manifest, _dump(doc))


def load_report(path: str) -> dict[str, Any]:
    """status.json or daemon.json as a dict; {} when missing or unreadable."""
    try:
        raw = read_bytes(path)
        doc = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def save_report(path: str, doc: Mapping[str, Any]) -> None:
    """Write status.json (under the state lock) or daemon.json (by the daemon alone).

    Raises:
        WriteError: the file cannot be written.
    """
    write_atomic(path, _dump(doc))


def remove_stale_state_temp_files(paths: StatePaths) -> list[str]:
    """Temp files a crash left for the files the state lock guards; call it under that lock."""
    return remove_stale_temp_files(paths.state_dir, (MANIFEST_NAME, PENDING_NAME, BLOCKED_NAME, STATUS_NAME))


def mark_pending(paths: StatePaths) -> None:
    write_atomic(paths.pending, b"ca_dir changed; the trust store update has not finished\n")


def clear_pending(paths: StatePaths) -> None:
    remove_file(paths.pending)


def is_pending(paths: StatePaths) -> bool:
    return os.path.exists(paths.pending)


@contextlib.contextmanager
def state_lock(paths: StatePaths, timeout: float = 600.0) -> Iterator[None]:
    """Hold the flock that keeps two syncs (CLI or daemon) from interleaving.

    Raises:
        LockTimeout: another process held it for `timeout` seconds.
        WriteError: the state directory cannot be created.
    """
    with _flock(paths.lock, timeout):
        yield


@contextlib.contextmanager
def _flock(path: str, timeout: float) -> Iterator[None]:
    ensure_directory(os.path.dirname(path), 0o755)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"another edge-certd process has held {path} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _entry_to_json(entry: InstalledCA) -> dict[str, Any]:
    return {
        "sha256": entry.sha256,
        "subject": entry.subject,
        "not_before": iso(entry.not_before),
        "not_after": iso(entry.not_after),
        "path": entry.path,
        "sources": list(entry.sources),
        "installed_at": iso(entry.installed_at),
    }


def _entry_from_json(item: dict[str, Any]) -> InstalledCA:
    return InstalledCA(
        sha256=str(item["sha256"]),
        subject=str(item["subject"]),
        not_before=parse_iso(item["not_before"]),
        not_after=parse_iso(item["not_after"]),
        path=str(item["path"]),
        sources=tuple(str(s) for s in item["sources"]),
        installed_at=parse_iso(item["installed_at"]),
    )


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def load_blocked(paths: StatePaths) -> frozenset[str]:
    """SHA-256s an operator removed with `edge-certd remove`; sources that still hold them
    are not trusted again until `edge-certd add` brings them back."""
    try:
        raw = read_bytes(os.path.join(paths.state_dir, BLOCKED_NAME))
        doc = json.loads(raw) if raw else []
    except (OSError, ValueError):
        return frozenset()
    return frozenset(str(sha) for sha in doc) if isinstance(doc, list) else frozenset()


def save_blocked(paths: StatePaths, blocked: frozenset[str]) -> None:
    write_atomic(os.path.join(paths.state_dir, BLOCKED_NAME), _dump(sorted(blocked)))
