"""The watcher never loses a directory: re-watching has no gap, a watch that ends or a
directory replaced under its name is found by the watcher's monitor (not the hourly rescan),
and dpkg's and ucf's temporary names are never sources.

Real inotify through the installed watchdog, in temporary directories. `_Loop` plays the
daemon loop's part: it re-watches when the watcher asks and nothing more. A directory is
"followed" when a file written into it afterwards is reported busy by that very path.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from support.certs import CA

from edge_certd.daemon.watcher import SourceWatcher
from edge_certd.store.sources import PACKAGE_MANAGER_SUFFIXES, package_dirs, scan_directory

DEADLINE = 30.0  # seconds; the monitor looks once a second, the machine may be busy
ROUNDS = 40  # deletions in a row; watchdog 2.2 lost the directory in about one in 30 under load


class _Loop:
    """The daemon loop's part: re-watch the directories `dirs()` names when asked."""

    def __init__(self, dirs: Callable[[], list[str]]) -> None:
        self.dirs = dirs
        self.woken = threading.Event()
        self.watcher = SourceWatcher(self.woken.set)
        self.rewatches = 0
        self.watcher.watch(self.dirs())

    def turn(self, timeout: float = 0.2) -> bool:
        """One turn of the loop; True when files changed."""
        self.woken.wait(timeout)
        self.woken.clear()
        changed, rewatch = self.watcher.take()
        if rewatch:
            self.watcher.watch(self.dirs())
            self.rewatches += 1
        return changed or rewatch

    def until(self, check: Callable[[], bool], what: str) -> float:
        """Turn until `check` holds; return the seconds it took."""
        start = time.monotonic()
        while not check():
            assert time.monotonic() - start < DEADLINE, f"not within {DEADLINE} s: {what}"
            self.turn()
        return time.monotonic() - start

    def follows(self, directory: Path, name: str = "probe") -> float:
        """Write into `directory` with the file left open: its own path must turn busy.

        A re-watch that lands after the write may drop that write's events (the daemon
        syncs after every re-watch, which reads the file): then write again."""
        start = time.monotonic()
        for attempt in itertools.count():
            path = directory / f"{name}-{attempt}.pem"
            rewatches = self.rewatches
            with path.open("wb") as handle:
                handle.write(b"-----BEGIN CERTIFICATE-----\n")
                handle.flush()
                while str(path) not in self.watcher.busy_paths(600):
                    took = time.monotonic() - start
                    assert took < DEADLINE, f"not within {DEADLINE} s: a write to {path} is seen"
                    self.turn()
                    _still_open(handle, path)
                    if self.rewatches != rewatches:
                        break
                else:
                    return time.monotonic() - start
        raise AssertionError("unreachable")


def _still_open(handle: BinaryIO, path: Path) -> None:
    """The loop's own file is still its descriptor: a re-watch never closes what the loop
    opened (watchdog 2.2 closed a deleted directory's descriptor number twice)."""
    try:
        held = os.fstat(handle.fileno())
    except OSError as exc:
        raise AssertionError(f"{path}'s descriptor was closed under the loop: {exc}") from exc
    there = path.stat()
    assert (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino), (
        f"{path}'s descriptor {handle.fileno()} now holds something else"
    )


@pytest.fixture
def journal() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("edge_certd")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


# -- dpkg's names ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", PACKAGE_MANAGER_SUFFIXES)
def test_a_package_managers_temporary_directory_is_no_package(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"contoso-roots{suffix}").mkdir()
    (tmp_path / "contoso-roots").mkdir()
    assert package_dirs(str(tmp_path)) == [str(tmp_path / "contoso-roots")]


@pytest.mark.parametrize("suffix", PACKAGE_MANAGER_SUFFIXES)
def test_a_package_managers_temporary_file_is_no_source(tmp_path: Path, suffix: str) -> None:
    pem = CA.root("Temporary Name Root").cert_pem
    (tmp_path / f"root.pem{suffix}").write_bytes(pem)
    (tmp_path / "root.pem").write_bytes(pem)
    assert [entry.path for entry in scan_directory(str(tmp_path), 65536)] == [str(tmp_path / "root.pem")]


# -- no gap, no lost watch -------------------------------------------------------------------


def test_a_directory_renamed_into_place_while_the_loop_rewatches_is_followed(tmp_path: Path) -> None:
    roots = tmp_path / "roots.d"
    roots.mkdir()
    loop = _Loop(lambda: [str(roots), *package_dirs(str(roots))])
    try:
        for i in range(20):
            name = roots / f"pkg{i}"
            (roots / f"pkg{i}.dpkg-new").mkdir()
            (roots / f"pkg{i}.dpkg-new" / "root.pem").write_bytes(b"x")
            # The re-watch this rename asks for runs while the next package arrives.
            os.rename(roots / f"pkg{i}.dpkg-new", name)
            loop.watcher.watch(loop.dirs())
            loop.until(lambda n=name: loop.watcher.watching().get(str(n)) == "inotify", f"{name} is watched")
            loop.follows(name)
        assert not any(".dpkg-" in path for path in loop.watcher.watching())
    finally:
        loop.watcher.stop()


def test_a_source_directory_deleted_and_created_again_is_followed(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        for name in ("root.pem", "b.pem"):
            (drop / name).write_bytes(b"x")
        for f in drop.iterdir():
            f.unlink()
        drop.rmdir()
        drop.mkdir()
        loop.follows(drop)
    finally:
        loop.watcher.stop()


def test_a_source_directory_deleted_and_created_again_many_times_is_followed_each_time(
    tmp_path: Path,
) -> None:
    # Each deletion stops the watch's emitter from watchdog's thread while the loop's
    # re-watch stops it too: the race that closed the loop's files and lost the watch.
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        for round_ in range(ROUNDS):
            for name in ("root.pem", "b.pem"):
                (drop / name).write_bytes(b"x")
            for f in drop.iterdir():
                f.unlink()
            drop.rmdir()
            drop.mkdir()
            loop.follows(drop, f"round{round_}")
    finally:
        loop.watcher.stop()


def test_a_drop_directory_replaced_by_a_rename_is_followed(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        staged = tmp_path / "drop.new"
        staged.mkdir()
        os.rename(drop, tmp_path / "drop.old")  # the watch follows this inode away
        os.rename(staged, drop)
        took = loop.follows(drop)
        assert took < 10, f"followed only after {took:.1f} s"
    finally:
        loop.watcher.stop()


def test_a_source_directory_that_appears_after_start_is_followed(tmp_path: Path) -> None:
    roots = tmp_path / "usr/share/edge-certd/roots.d"  # neither it nor its parent exists yet
    loop = _Loop(lambda: [str(roots), *package_dirs(str(roots))])
    try:
        assert loop.watcher.watching() == {}
        (roots / "contoso-roots").mkdir(parents=True)
        loop.follows(roots / "contoso-roots")
    finally:
        loop.watcher.stop()


def test_a_watch_whose_thread_ended_is_recovered_and_said_once(
    tmp_path: Path, journal: list[logging.LogRecord]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        for attempt in range(2):
            observer = loop.watcher._observer
            assert observer is not None
            (emitter,) = [e for e in observer.emitters if e.watch.path == str(drop)]
            emitter.stop()  # the thread ends, as one reading a descriptor closed under it does
            emitter.join(5)
            loop.follows(drop, f"probe-{attempt}")
        lost = [r for r in journal if "ended by itself" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in journal]
        assert lost[0].levelno == logging.WARNING and lost[0].__dict__["SOURCE_PATH"] == str(drop)
    finally:
        loop.watcher.stop()


def test_a_dead_observer_thread_is_replaced_and_said(
    tmp_path: Path, journal: list[logging.LogRecord]
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        observer = loop.watcher._observer
        assert observer is not None
        observer.stop()
        observer.join(5)
        loop.follows(drop)
        assert any("observer thread ended" in r.getMessage() for r in journal)
    finally:
        loop.watcher.stop()


def test_a_directory_nobody_changes_is_not_rewatched(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    loop = _Loop(lambda: [str(drop)])
    try:
        loop.follows(drop)
        end = time.monotonic() + 3  # three looks of the monitor
        while time.monotonic() < end:
            loop.turn()
        assert loop.rewatches == 0
    finally:
        loop.watcher.stop()
