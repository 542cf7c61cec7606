"""The hostile corpus (tests/support/hostile.py) through `inspect`, `sync` and the running daemon.

For every case: nothing wrong is trusted, the reason is one of the expected rejection
codes with a message, every name is shown with its control characters escaped, and
the process neither crashes nor hangs (a FIFO, a 100 MB file, a file that never stops
growing).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemonrun import RunningDaemon
from support.hostile import Case, Growing, Material, corpus, make_material, materialise
from support.invariants import check_settled, fingerprints, installed_cas
from support.tree import make_tree, require_tool

from edge_certd import cli
from edge_certd.core.text import printable


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    require_tool("openssl")
    return make_material(tmp_path_factory.mktemp("hostile-material"))


@pytest.fixture(scope="module")
def cases(material: Material) -> list[Case]:
    return corpus(material)


@contextlib.contextmanager
def populated(directory: Path, cases: list[Case]) -> Iterator[None]:
    """All cases in `directory`; growing files keep growing until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    writers: list[Growing] = []
    try:
        for case in cases:
            writer = materialise(case, directory)
            if writer is not None:
                writers.append(writer)
        yield
    finally:
        for writer in writers:
            writer.stop()


def trusted_by(cases: list[Case]) -> set[str]:
    return {sha for case in cases for sha in case.trusted}


def shown(directory: Path, case: Case) -> str:
    """How edge-certd names the entry: control characters and stray bytes escaped."""
    return os.path.join(str(directory), printable(case.text_name, limit=255))


def _clean(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def check_reasons(
    directory: Path, cases: list[Case], rejected: list[dict[str, str]], daemon: bool = False
) -> None:
    """Each rejecting case has one of its codes, a message, and printable names."""
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for item in rejected:
        by_source[item["source"]].append(item)
        for key in ("source", "message", "subject"):
            assert _clean(item.get(key) or ""), f"unescaped control character in {item!r}"
        assert item["message"], item
    for case in cases:
        got = by_source.get(shown(directory, case), [])
        if case.codes:
            if daemon and case.daemon_may_skip and not got:
                continue
            assert got, f"{case.note} ({case.text_name!r}): no rejection recorded"
            assert {g["code"] for g in got} <= case.codes, f"{case.note}: {got[:3]}"
        else:
            assert not got, f"{case.note} was rejected: {got}"


def test_the_corpus_has_at_least_forty_cases(cases: list[Case]) -> None:
    assert len(cases) >= 40
    kinds = {c.kind for c in cases}
    assert kinds >= {"file", "big", "growing", "fifo", "socket", "chardev", "symlink", "hardlink", "dir"}


def test_inspect_names_the_reason_for_every_case(
    cases: list[Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "device", mozilla_count=1)
    where = tmp_path / "inspect"
    with populated(where, cases):
        for case in cases:
            path = os.fsdecode(os.path.join(os.fsencode(where), case.name))
            code = cli.main(["--config", str(tree.config_path), "inspect", path])
            out = capsys.readouterr().out
            if case.trusted:
                assert code == cli.EXIT_OK and "would trust" in out, (case.note, out)
            else:
                assert code == cli.EXIT_REJECTED, (case.note, out)
                assert any(f"({c})" in out for c in case.codes), (case.note, out)
                assert "would trust" not in out, (case.note, out)
        # And all at once through the real entry point: one process, no crash, no hang.
        paths = [os.path.join(os.fsencode(where), c.name) for c in cases]
        done = subprocess.run(
            [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), "inspect", *paths],
            capture_output=True,
            timeout=600,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
    assert done.returncode == cli.EXIT_REJECTED, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    assert done.stdout.count(b"would trust") == sum(1 for c in cases if c.trusted)


def test_sync_trusts_exactly_the_real_roots_and_says_why_for_the_rest(
    cases: list[Case], tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "device", mozilla_count=1)
    roots = fingerprints(tree.system_bundle)
    with populated(tree.drop, cases):
        done = tree.cli("sync")
        assert done.returncode == cli.EXIT_REJECTED, done.stderr
        assert "Traceback" not in done.stderr
        status = json.loads(tree.cli("status", "--json").stdout)
    check_settled(tree, trusted_by(cases), roots)
    check_reasons(tree.drop, cases, status["rejected"])
    listed = {item["sha256"]: item for item in status["trusted"]}
    same = [c for c in cases if c.name in (b"same-1.pem", b"same-2.der")]
    sources = listed[next(iter(same[0].trusted))]["sources"]
    assert {shown(tree.drop, c) for c in same} <= set(sources)
    for item in status["trusted"]:
        assert _clean(item["subject"]) and len(item["subject"]) <= 200, item["subject"]
    # A file holding a private key was tightened to 0600, never copied anywhere.
    assert (tree.drop / "cert-and-key.pem").stat().st_mode & 0o077 == 0
    # So was every file that may hold one: a key block with no END line, a PFX no
    # password opens.
    for name in ("key-no-end.pem", "der-key-appended.pem", "sealed.pfx", "pfx-iterations.pfx"):
        assert (tree.drop / name).stat().st_mode & 0o077 == 0, name


def test_daemon_stays_up_and_trusts_nothing_wrong(cases: list[Case], tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "device", mozilla_count=1)
    roots = fingerprints(tree.system_bundle)
    want = trusted_by(cases)
    tree.drop.mkdir(parents=True)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        with populated(tree.drop, cases):

            def settled() -> bool:
                if set(installed_cas(tree)) != want:
                    return False
                doc = json.loads((tree.state / "status.json").read_bytes())
                got = {r["source"] for r in doc.get("rejected", [])}
                needed = {shown(tree.drop, c) for c in cases if c.codes and not c.daemon_may_skip}
                return needed <= got

            try:
                # Checked at the end of each sync, never half-way through one. The corpus
                # holds CPU bombs that each may use the judge's whole CPU limit, and a file
                # that never stops growing keeps the daemon syncing: on a loaded machine
                # that is minutes, not seconds.
                daemon.wait_synced(mark, check=settled, timeout=600, what="the daemon to judge every case")
            except AssertionError:
                doc = json.loads((tree.state / "status.json").read_bytes())
                got = {r["source"] for r in doc.get("rejected", [])}
                missing = [
                    c.note
                    for c in cases
                    if c.codes and not c.daemon_may_skip and shown(tree.drop, c) not in got
                ]
                raise AssertionError(
                    f"installed {len(installed_cas(tree))} of {len(want)}; "
                    f"not judged: {missing}\n{daemon.log()[-3000:]}"
                ) from None
            assert daemon.alive
            status = json.loads(tree.cli("status", "--json").stdout)
            check_reasons(tree.drop, cases, status["rejected"], daemon=True)
            assert fingerprints(tree.edge_roots) == want
            # Still answering: a reload goes through RELOADING=1 and back to READY=1.
            mark = daemon.mark()
            daemon.signal(signal.SIGHUP)
            daemon.wait_ready(mark)
            assert daemon.alive
    assert daemon.proc.returncode == 0, daemon.log()
    assert "Traceback" not in daemon.log()
    check_settled(tree, want, roots)
