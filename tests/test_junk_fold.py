"""A directory of junk is counted, not kept (issue 24, B6): past the first KEEP_JUNK junk files
a sync folds each into a count and a journal key, and everything people read still adds up.

Real CLI syncs on a temporary tree, with the real judge; the journal lines are the CLI's
stderr (EDGE_CERTD_LOG=stderr), as the tests of "each thing once" read them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from support.certs import CA
from support.tree import Tree

from edge_certd.sync.engine import Engine
from edge_certd.sync.journal_events import MAX_REJECTION_EVENTS
from edge_certd.sync.judging import KEEP_JUNK
from edge_certd.sync.record import MAX_LISTED
from edge_certd.sync.report import MAX_PRINTED

JUNK = KEEP_JUNK + 300


def _sync(tree: Tree) -> tuple[str, str]:
    done = tree.cli("sync")
    assert done.returncode == 3, done.stderr  # rejections: the exit code says so
    return done.stdout, done.stderr


def _named(log: str) -> int:
    """Rejections the journal named one by one."""
    return sum(1 for line in log.splitlines() if "rejected (unparseable)" in line)


def test_junk_past_what_is_kept_is_counted_everywhere_and_said_once(tree: Tree) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "gateway-root.pem").write_bytes(CA.root("Fold Root").cert_pem)
    for i in range(JUNK):
        (tree.drop / f"junk-{i:05d}.pem").write_bytes(b"not a certificate %d\n" % i)

    out, log = _sync(tree)
    assert "1 CA trusted" in out
    assert f"… and {JUNK - MAX_PRINTED} more rejections" in out, out
    # The journal: the first new ones by name, the rest in one line, as without folding.
    assert _named(log) == MAX_REJECTION_EVENTS, log[-2000:]
    assert f"{JUNK - MAX_REJECTION_EVENTS} more new rejections not logged" in log, log[-2000:]
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["rejected_files_total"] == JUNK
    assert status["rejected_total"] == JUNK
    assert status["rejected_files_by_reason"] == {"unparseable": JUNK}
    assert len(status["rejected"]) == MAX_LISTED
    assert status["rejected"][0]["source"].endswith("junk-00000.pem")

    # Nothing new: nothing said again, folded files included.
    out, log = _sync(tree)
    assert _named(log) == 0 and "more new rejection" not in log, log[-2000:]

    # One new junk file that sorts last (past everything kept whole) is still named.
    (tree.drop / "zzz-new.pem").write_bytes(b"new junk\n")
    out, log = _sync(tree)
    assert _named(log) == 1 and "zzz-new.pem" in log, log[-2000:]
    assert "more new rejection" not in log
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["rejected_files_total"] == JUNK + 1


def test_a_file_that_leaks_a_key_or_names_a_certificate_is_never_folded(tree: Tree) -> None:
    root, leaf_ca = CA.root("Leaky Fold Root"), CA.root("Issuing Fold Root")
    leaf = leaf_ca.issue_server("fold-leaf.example", ["fold-leaf.example"])
    tree.drop.mkdir(parents=True, exist_ok=True)
    for i in range(KEEP_JUNK + 10):
        (tree.drop / f"a-junk-{i:05d}.pem").write_bytes(b"junk %d\n" % i)
    (tree.drop / "z-leaky.pem").write_bytes(root.key_pem)
    (tree.drop / "z-leaf.pem").write_bytes(leaf.cert_pem)
    judged = Engine(tree.load()).judge_sources(dt.datetime.now(dt.UTC))
    kept = {Path(v.source).name for v in judged.verdicts}
    assert {"z-leaky.pem", "z-leaf.pem"} <= kept
    assert len(judged.verdicts) == KEEP_JUNK + 2
    assert judged.folded.by_reason == {"unparseable": 10}
    assert (tree.drop / "z-leaky.pem").stat().st_mode & 0o777 == 0o600
