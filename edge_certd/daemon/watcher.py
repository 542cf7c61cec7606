"""inotify (through watchdog) for the source directories.

Runs in watchdog's thread and only records what happened and wakes the main loop; the
loop decides when and what to sync.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from edge_certd.store.sources import is_temporary_name


class SourceWatcher(FileSystemEventHandler):
    """Watches source directories; tells complete files from files still being written.

    A file counts as complete when it is closed after writing, renamed into the
    directory, or deleted. Between its creation and its close it is "busy": scp writes in
    place, so reading it then would see half a certificate.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake
        self._lock = threading.Lock()
        self._dirs: set[str] = set()
        self._busy: dict[str, float] = {}
        self._created: dict[str, float] = {}
        self._changed = False
        self._rewatch = False
        self._observer: Observer | None = None  # type: ignore[valid-type]

    # -- called by the main loop -------------------------------------------------------

    def watch(self, dirs: Sequence[str]) -> list[str]:
        """(Re)start watching `dirs`; return those missing, whose parent is watched instead."""
        self.stop()
        self._dirs = {os.path.abspath(d) for d in dirs}
        observer = Observer()
        missing = []
        for directory in sorted(self._dirs):
            target = directory
            if not os.path.isdir(directory):
                missing.append(directory)
                target = os.path.dirname(directory)  # to notice when it appears
                if not os.path.isdir(target):
                    continue  # the periodic rescan will look again
            try:
                observer.schedule(self, target, recursive=False)
            except OSError:
                missing.append(directory)
        observer.daemon = True
        observer.start()
        self._observer = observer
        return missing

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def take(self) -> tuple[bool, bool]:
        """(files changed, directories need rewatching) since the last call."""
        with self._lock:
            result = (self._changed, self._rewatch)
            self._changed = self._rewatch = False
        return result

    def busy_paths(self, max_age: float) -> frozenset[str]:
        """Files being written. After `max_age` seconds without a close we stop waiting."""
        now = time.monotonic()
        with self._lock:
            for path, since in list(self._busy.items()):
                if now - since > max_age or not os.path.exists(path):
                    del self._busy[path]
            just_opened = set()
            for path, since in list(self._created.items()):
                if now - since > max_age or _size(path) != 0:
                    del self._created[path]
                else:
                    just_opened.add(path)
            return frozenset(self._busy) | just_opened

    # -- called by watchdog's thread ---------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        dest = _text(getattr(event, "dest_path", "") or "")
        if src in self._dirs or dest in self._dirs:
            if isinstance(event, (DirCreatedEvent, DirDeletedEvent, DirMovedEvent)):
                self._mark(rewatch=True)
            return
        inside_src = os.path.dirname(src) in self._dirs
        inside_dest = bool(dest) and os.path.dirname(dest) in self._dirs
        if not (inside_src or inside_dest):
            return  # e.g. our own state files next to a missing source directory
        if isinstance(event, (DirCreatedEvent, DirDeletedEvent, DirMovedEvent)):
            # A roots package's directory came or went (dpkg): the loop watches the new set.
            self._mark(changed=True, rewatch=True)
            return
        if isinstance(event, FileModifiedEvent):
            if is_temporary_name(os.path.basename(src)):
                return
            if _attributes_only(src):
                # A chmod or chown (our own 0600 on a leaked key among them) writes nothing:
                # the file is complete, so it is judged again, never held as "being written".
                self._mark(changed=True)
                return
            with self._lock:
                self._busy.setdefault(src, time.monotonic())
            return
        if isinstance(event, FileCreatedEvent) and not os.path.islink(src):
            # inotify reports a file renamed in from another directory as a creation, so a
            # creation may be a complete file: sync it, unless it is still empty (a writer
            # that has only just opened it). Its writes turn it busy until the close.
            if not is_temporary_name(os.path.basename(src)):
                with self._lock:
                    self._created[src] = time.monotonic()
                self._mark(changed=True)
            return
        if isinstance(event, FileClosedEvent):
            self._finish(src)
        elif isinstance(event, FileMovedEvent):
            self._finish(src)
            if inside_dest and not is_temporary_name(os.path.basename(dest)):
                self._finish(dest)
        elif isinstance(
            event, (FileDeletedEvent, FileCreatedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent)
        ):
            self._finish(src)

    def _finish(self, path: str) -> None:
        with self._lock:
            self._busy.pop(path, None)
            self._created.pop(path, None)
        if not is_temporary_name(os.path.basename(path)):
            self._mark(changed=True)

    def _mark(self, changed: bool = False, rewatch: bool = False) -> None:
        with self._lock:
            self._changed |= changed
            self._rewatch |= rewatch
        self._wake()


def _attributes_only(path: str) -> bool:
    """The last change was to the inode, not the data: a write sets mtime and ctime
    together, a chmod or chown moves only ctime. watchdog 2.2 reports both as a modify."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return info.st_ctime_ns > info.st_mtime_ns


def _size(path: str) -> int | None:
    """A regular file's size; None for anything else. A FIFO, socket or device node is
    empty but never "being written" (no close ever comes), so it must not look busy."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
