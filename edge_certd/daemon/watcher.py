"""inotify (through watchdog) for the source directories.

Runs in watchdog's threads and only records what happened and wakes the main loop; the
loop decides when and what to sync.

No watch is lost for longer than the monitor's interval (a second, or under systemd's
watchdog its ping interval, so the idle daemon wakes no more often than that):
- One observer lives as long as the watcher, and a re-watch adds the new watches before it
  drops the old ones, so the directory that holds the others (package_roots_dir, or the
  parent of a missing source) is watched without a gap; a directory renamed into place
  while the loop re-watches is an event there, so the loop re-watches again. The loop
  syncs after every re-watch, which reads what changed before a new watch was in place.
- Before watchdog 7 each watch has an inotify descriptor of its own, which its emitter
  closes when stopped. A deleted directory stops its emitter from watchdog's thread while
  the loop's re-watch stops it too; watchdog 2.2 then closed that descriptor number twice,
  and the second close hit whatever the loop had opened under the number meanwhile: a
  file it was reading, then (closed by its owner) the new watch's descriptor, whose
  thread went on living with no events for good. `_SerialStopEmitter` makes the two
  stops one.
- A monitor thread looks at what inotify does not say: a watch whose thread
  ended, a directory replaced under its name (a watch follows the inode, not the name),
  a missing directory that appeared. It asks the loop to re-watch; a lost watch is said in
  the journal once.
- A directory inotify refuses (fs.inotify.max_user_watches or max_user_instances reached)
  is polled every second instead, and said so once (the monitor looks every second then).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.version import VERSION_MAJOR

from edge_certd.store.sources import is_temporary_name
from edge_certd.sync import journal as events

CHECK_INTERVAL = 1.0  # seconds between the monitor's looks (and the polls of refused directories)
# inotify_add_watch(2) and inotify_init(2): the per-user limits, or the kernel's memory.
_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_DIR_EVENTS = (DirCreatedEvent, DirDeletedEvent, DirMovedEvent)

_Identity = tuple[int, int] | None  # (st_dev, st_ino) of a directory; None: no directory there
_Listing = dict[str, tuple[bool, int, int, int]]  # name: (is a directory, inode, size, mtime)


class _SerialStopEmitter(InotifyEmitter):
    """watchdog's inotify emitter, stopped once however many threads stop it at a time.

    Its stop closes the descriptor and forgets it, unlocked: two stops at once (its own on
    IN_DELETE_SELF, the loop's unschedule) both close the number (watchdog 2.2).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_lock = threading.Lock()

    def on_thread_stop(self) -> None:
        with self._stop_lock:  # the second stop finds the descriptor forgotten
            super().on_thread_stop()


def _new_observer() -> BaseObserver:
    if VERSION_MAJOR >= 7:
        return Observer()  # one descriptor for all watches, which an emitter never closes
    return BaseObserver(_SerialStopEmitter)  # before 7, InotifyObserver is this with InotifyEmitter


@dataclass(frozen=True, kw_only=True)
class _Watch:
    handle: ObservedWatch
    identity: _Identity  # the directory the watch was put on


# How many recently closed files keep their (size, mtime) for telling a chmod from a write.
MAX_CLOSED = 4096


class SourceWatcher(FileSystemEventHandler):
    """Watches source directories; tells complete files from files still being written.

    A file counts as complete when it is closed after writing, renamed into the
    directory, or deleted. Between its creation and its close it is "busy": scp writes in
    place, so reading it then would see half a certificate.
    """

    def __init__(
        self,
        wake: Callable[[], None],
        *,
        check_interval: float = CHECK_INTERVAL,
        idle_check_interval: float | None = None,
    ) -> None:
        super().__init__()
        self._wake = wake
        self._interval = check_interval
        # How often the monitor looks while no directory is polled: the daemon under systemd's
        # watchdog passes its ping interval, so the idle service wakes no more often than the
        # watchdog needs (issue 24). A watch lost then is found within that long, and inotify
        # itself reports a watched directory deleted, or renamed within a watched parent.
        self._idle_interval = idle_check_interval or check_interval
        self._lock = threading.Lock()  # the flags, the busy files and the notes
        self._dirs: frozenset[str] = frozenset()
        self._busy: dict[str, float] = {}
        # Each file's (size, mtime) when it was last closed: a modify event that changes neither
        # is a chmod or chown after the close (`install -m 0644` writes, closes, then chmods, in
        # the same clock tick, so ctime and mtime can be equal) and must not make it busy.
        self._closed: dict[str, tuple[int, int]] = {}
        self._created: dict[str, float] = {}
        self._settling: set[str] = set()  # changed in a polled directory; complete when unchanged
        self._stale: set[str] = set()  # watched directories deleted or renamed: watch afresh
        self._changed = False
        self._rewatch = False
        self._notes: dict[str, tuple[str, str, int]] = {}  # key: (path, text, level), for the loop
        self._said: set[str] = set()
        # The watches: the loop changes them, the monitor reads them.
        self._watch_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._watches: dict[str, _Watch] = {}
        self._polled: dict[str, _Listing] = {}
        self._expected: dict[str, _Identity] = {}
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._nudge = threading.Event()  # wakes the monitor: a stop, or a directory to poll

    # -- called by the main loop -------------------------------------------------------

    def watch(self, dirs: Sequence[str]) -> list[str]:
        """Watch `dirs` from now on; return those missing, whose parent is watched instead.

        New watches are in place before old ones go. Also says in the journal what the
        monitor found since the last call (a lost watch, a directory polled instead).
        """
        wanted = {os.path.abspath(d) for d in dirs}
        expected: dict[str, _Identity] = {}
        targets: dict[str, _Identity] = {}
        missing = []
        for directory in sorted(wanted):
            # Taken before the watch is added: a directory replaced in between differs
            # from this, and the monitor then asks for a re-watch.
            identity = expected[directory] = _identity(directory)
            if identity is not None:
                targets[directory] = identity
                continue
            missing.append(directory)
            parent = os.path.dirname(directory)  # to notice when it appears
            parent_identity = expected[parent] = _identity(parent)
            if parent_identity is not None:
                targets[parent] = parent_identity
        self._dirs = frozenset(wanted)
        with self._lock:
            stale, self._stale = self._stale, set()
        with self._watch_lock:
            self._expected = expected
            observer, retired = self._live_observer()
            for target, identity in sorted(targets.items()):
                self._ensure(observer, target, identity, fresh=target in stale)
            for target in set(self._watches) - set(targets):
                observer.unschedule(self._watches.pop(target).handle)
            for target in set(self._polled) - set(targets):
                del self._polled[target]
            if retired is not None:
                retired.stop()  # dead already; this closes what its watches held
        self._start_monitor()
        if self._polled and self._idle_interval != self._interval:
            self._nudge.set()
        self._say_notes()
        return missing

    def stop(self) -> None:
        self._stopping.set()
        self._nudge.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None
        with self._watch_lock:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)
                self._observer = None
            self._watches.clear()
            self._polled.clear()
            self._expected = {}

    def watching(self) -> dict[str, str]:
        """Each directory watched now and how: "inotify", or "poll" where inotify refused it.
        A watch whose thread ended is not listed."""
        with self._watch_lock:
            observer = self._observer
            if observer is None or not observer.is_alive():
                return dict.fromkeys(self._polled, "poll")
            found = {t: "inotify" for t, w in self._watches.items() if _alive(observer, w.handle)}
            return found | dict.fromkeys(self._polled, "poll")

    def take(self) -> tuple[bool, bool]:
        """(files changed, directories need rewatching) since the last call."""
        with self._lock:
            result = (self._changed, self._rewatch)
            self._changed = self._rewatch = False
        return result

    def has_busy(self) -> bool:
        """Whether a file is being written now (or was created and is still empty): a burst in
        progress. A file renamed in is reported as created, but it is not empty."""
        with self._lock:
            return bool(self._busy) or any(_size(path) == 0 for path in self._created)

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

    def _live_observer(self) -> tuple[BaseObserver, BaseObserver | None]:
        """The running observer, and one whose thread ended (to stop once the new watches
        are in place). Called with _watch_lock held."""
        current = self._observer
        if current is not None and current.is_alive():
            return current, None
        observer = _new_observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        if current is None:
            return observer, None
        self._note(
            "observer", "", "watchdog's observer thread ended; every source directory is watched again"
        )
        self._watches.clear()
        return observer, current

    def _ensure(self, observer: BaseObserver, target: str, identity: _Identity, *, fresh: bool) -> None:
        current = self._watches.get(target)
        if current is not None:
            if not fresh and current.identity == identity and _alive(observer, current.handle):
                return
            # Its thread ended, or the directory left this name: nothing comes through it.
            # watchdog keeps one watch per path, so the old one goes before the new one.
            observer.unschedule(self._watches.pop(target).handle)
        try:
            handle = observer.schedule(self, target, recursive=False)
        except OSError as exc:
            self._poll_instead(target, exc)
            return
        self._watches[target] = _Watch(handle=handle, identity=identity)
        if self._polled.pop(target, None) is not None:
            self._said.discard(f"poll:{target}")
            self._note(f"inotify:{target}", target, f"{target} is watched by inotify again")

    def _poll_instead(self, target: str, exc: OSError) -> None:
        if target in self._polled:
            return
        self._polled[target] = _listing(target)
        if exc.errno in _LIMIT_ERRNOS:
            why = "the inotify limits are reached (sysctl fs.inotify.max_user_watches, max_user_instances)"
        else:
            why = f"inotify refused it ({exc.strerror})"
        self._said.discard(f"inotify:{target}")
        self._note(
            f"poll:{target}",
            target,
            f"{target} cannot be watched: {why}; it is looked at every {self._interval:g} s instead",
            logging.WARNING,
        )

    def _say_notes(self) -> None:
        with self._lock:
            notes, self._notes = self._notes, {}
        for key, (path, text, level) in notes.items():
            if key not in self._said:
                self._said.add(key)
                events.emit("source_error", text, level, source=path or None, reason="watch")

    # -- the monitor thread --------------------------------------------------------------

    def _start_monitor(self) -> None:
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._stopping = threading.Event()
        self._nudge = threading.Event()
        self._monitor = threading.Thread(
            target=self._run_monitor, name="edge-certd-watch-monitor", daemon=True
        )
        self._monitor.start()

    def _run_monitor(self) -> None:
        stopping, nudge = self._stopping, self._nudge
        while True:
            # A directory polled from now on is looked at within check_interval: watch() sets
            # the nudge, as stop() does.
            nudge.wait(self._interval if self._polled else self._idle_interval)
            nudge.clear()
            if stopping.is_set():
                return
            try:
                changed, rewatch = self._check()
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive its own bug
                self._note("monitor", "", f"the source watcher's monitor failed once ({exc!r})")
                changed = rewatch = True
            if changed or rewatch:
                self._mark(changed=changed, rewatch=rewatch)

    def _check(self) -> tuple[bool, bool]:
        """(changed, rewatch): what the watches missed since the last look."""
        with self._watch_lock:
            observer = self._observer
            if observer is None:
                return False, False
            alive = {e.watch for e in list(observer.emitters) if e.is_alive()}
            watches = dict(self._watches)
            expected = dict(self._expected)
            polled = dict(self._polled)
        # A directory that came, went or was replaced is a change, not a loss.
        moved = {path for path, identity in expected.items() if _identity(path) != identity}
        rewatch = bool(moved) or not observer.is_alive()
        for target, watch in watches.items():
            if watch.handle not in alive and target not in moved:
                self._note(
                    f"lost:{target}",
                    target,
                    f"the inotify watch on {target} ended by itself; it is watched again and read again now",
                    logging.WARNING,
                )
                rewatch = True
        changed, dirs_changed = self._poll(polled)
        return changed or rewatch or dirs_changed, rewatch or dirs_changed

    def _poll(self, polled: dict[str, _Listing]) -> tuple[bool, bool]:
        """Compare each refused directory with its last listing: a file that changed is
        busy until a look finds it unchanged. Returns (changed, a subdirectory changed)."""
        changed = dirs_changed = False
        for target, before in polled.items():
            now = _listing(target)
            with self._watch_lock:
                if target not in self._polled:
                    continue
                self._polled[target] = now
            for name in before.keys() | now.keys():
                path = os.path.join(target, name)
                old, new = before.get(name), now.get(name)
                if old == new:
                    if path in self._settling:
                        self._settling.discard(path)
                        self._finish(path)
                    continue
                entry = old if old is not None else new
                if entry is not None and entry[0]:
                    dirs_changed = True  # a roots package's directory came or went
                elif new is None or is_temporary_name(name):
                    changed = changed or not is_temporary_name(name)
                else:
                    self._settling.add(path)
                    with self._lock:
                        self._busy.setdefault(path, time.monotonic())
        return changed, dirs_changed

    # -- called by watchdog's thread ---------------------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._on_event(event)
        except Exception as exc:  # noqa: BLE001 - an exception here would end watchdog's thread
            self._note("handler", "", f"the source watcher failed on one event ({exc!r}); reading again")
            self._mark(changed=True, rewatch=True)

    def _on_event(self, event: FileSystemEvent) -> None:
        src = _text(event.src_path)
        dest = _text(getattr(event, "dest_path", "") or "")
        if event.event_type == "events_lost":  # watchdog >= 4: the kernel's queue overflowed
            self._mark(changed=True)
            return
        if src in self._dirs or dest in self._dirs:
            if event.event_type in ("created", "deleted", "moved"):
                if src in self._dirs and event.event_type != "created":
                    # The directory left its name. Its watch goes even if the name holds a
                    # directory that looks the same: one made again may reuse the inode.
                    with self._lock:
                        self._stale.add(src)
                self._mark(rewatch=True)
            return
        inside_src = os.path.dirname(src) in self._dirs
        inside_dest = bool(dest) and os.path.dirname(dest) in self._dirs
        if not (inside_src or inside_dest):
            return  # e.g. our own state files next to a missing source directory
        if isinstance(event, _DIR_EVENTS):
            names = [os.path.basename(p) for p in (src, dest) if p]
            if all(is_temporary_name(name) for name in names):
                return  # dpkg's NAME.dpkg-new before its rename: no package yet
            # A roots package's directory came or went (dpkg): the loop watches the new set.
            self._mark(changed=True, rewatch=True)
            return
        if event.event_type == "attrib":
            # watchdog >= 2.3 reports a chmod or chown apart (2.2 as a modify, below).
            if not is_temporary_name(os.path.basename(src)):
                self._mark(changed=True)
            return
        if isinstance(event, FileModifiedEvent):
            if is_temporary_name(os.path.basename(src)):
                return
            if _attributes_only(src) or self._unchanged_since_close(src):
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
            stamp = _data_stamp(src)
            with self._lock:
                if stamp is not None:
                    self._closed.pop(src, None)
                    self._closed[src] = stamp
                    if len(self._closed) > MAX_CLOSED:  # the oldest close is the least useful
                        del self._closed[next(iter(self._closed))]
            self._finish(src)
        elif isinstance(event, FileMovedEvent):
            self._finish(src)
            if inside_dest and not is_temporary_name(os.path.basename(dest)):
                self._finish(dest)
        elif isinstance(event, (FileDeletedEvent, FileCreatedEvent)):
            self._finish(src)

    def _unchanged_since_close(self, path: str) -> bool:
        stamp = _data_stamp(path)
        with self._lock:
            return stamp is not None and self._closed.get(path) == stamp

    def _finish(self, path: str) -> None:
        with self._lock:
            self._busy.pop(path, None)
            self._created.pop(path, None)
            if not os.path.lexists(path):
                self._closed.pop(path, None)
        if not is_temporary_name(os.path.basename(path)):
            self._mark(changed=True)

    def _mark(self, changed: bool = False, rewatch: bool = False) -> None:
        with self._lock:
            self._changed |= changed
            self._rewatch |= rewatch
        self._wake()

    def _note(self, key: str, path: str, text: str, level: int = logging.ERROR) -> None:
        """Keep a line for the journal; the loop says it (once) at its next re-watch."""
        with self._lock:
            self._notes.setdefault(key, (path, text, level))


def _alive(observer: BaseObserver, handle: ObservedWatch) -> bool:
    return any(e.watch == handle and e.is_alive() for e in list(observer.emitters))


def _identity(path: str) -> _Identity:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


def _listing(path: str) -> _Listing:
    """What a poll compares: each entry's kind, inode, size and mtime (links not followed)."""
    found: _Listing = {}
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[entry.name] = (
                    stat.S_ISDIR(info.st_mode),
                    info.st_ino,
                    info.st_size,
                    info.st_mtime_ns,
                )
    except OSError:
        pass  # gone or unreadable: the identity check and the sync say so
    return found


def _attributes_only(path: str) -> bool:
    """The last change was to the inode, not the data: a write sets mtime and ctime
    together, a chmod or chown moves only ctime. watchdog 2.2 reports both as a modify."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return info.st_ctime_ns > info.st_mtime_ns


def _data_stamp(path: str) -> tuple[int, int] | None:
    """A regular file's (size, mtime): what a write changes and a chmod does not."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


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
