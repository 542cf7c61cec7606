"""The verdict cache gives what a fresh judgement would, or nothing."""

from __future__ import annotations

import datetime as dt
import json

from support.certs import CA
from support.oddcerts import pem, self_signed
from support.tree import Tree

from edge_certd.store.verdict_cache import CACHE_NAME
from edge_certd.sync.engine import Engine


def judged(tree: Tree, now: dt.datetime | None = None) -> list[tuple[str, list[str], list[str]]]:
    verdicts, _ = Engine(tree.load()).judge_sources(now or dt.datetime.now(dt.UTC))
    return [(v.source, [c.sha256 for c in v.accepted], [r.code for r in v.rejected]) for v in verdicts]


def test_cached_verdicts_equal_fresh_ones_and_are_written_once(tree: Tree) -> None:
    tree.drop.mkdir(parents=True)
    root = CA.root()
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    (tree.drop / "leaf.pem").write_bytes(root.issue_server("gw", ["gw"]).cert_pem)
    first = judged(tree)
    cache = tree.state / CACHE_NAME
    stamp = cache.stat().st_mtime_ns
    assert judged(tree) == first
    assert cache.stat().st_mtime_ns == stamp  # same set of files: not rewritten
    (tree.drop / "leaf.pem").unlink()
    judged(tree)
    assert len(json.loads(cache.read_text())["entries"]) == 1  # pruned to what is in use


def test_a_crossed_date_boundary_is_judged_again(tree: Tree) -> None:
    now = dt.datetime.now(dt.UTC)
    tree.drop.mkdir(parents=True)
    (tree.drop / "soon.pem").write_bytes(pem(self_signed("Soon", not_after=now + dt.timedelta(days=2))))
    assert judged(tree, now)[0][2] == []
    assert judged(tree, now + dt.timedelta(days=3))[0][2] == ["expired"]


def test_a_policy_change_is_not_answered_from_the_cache(tree: Tree) -> None:
    tree.drop.mkdir(parents=True)
    (tree.drop / "inter.pem").write_bytes(CA.root().intermediate("Inter").cert_pem)
    assert judged(tree)[0][2] == ["not_self_signed"]
    tree.write_config(policy__allow_intermediate=True)
    assert judged(tree)[0][2] == [] and judged(tree)[0][1]


def test_a_tampered_cache_entry_is_ignored(tree: Tree) -> None:
    tree.drop.mkdir(parents=True)
    root, other = CA.root("Real"), CA.root("Injected")
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    judged(tree)
    cache = tree.state / CACHE_NAME
    doc = json.loads(cache.read_text())
    for entry in doc["entries"].values():
        import base64

        entry["accepted"][0]["der"] = base64.b64encode(other.der).decode()
    cache.write_text(json.dumps(doc))
    import hashlib

    assert judged(tree)[0][1] == [hashlib.sha256(root.der).hexdigest()]


def test_a_new_judge_does_not_reuse_an_old_judges_verdicts(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edge_certd.core.policy import Rules
    from edge_certd.store import verdict_cache

    def key() -> str:
        return verdict_cache.VerdictCache(str(tmp_path), Rules(), ()).key("ab" * 32, "drop")

    same = key()
    assert key() == same  # works: the same judge answers from its own cache
    monkeypatch.setattr(verdict_cache, "JUDGE_VERSION", verdict_cache.JUDGE_VERSION + 1)
    bumped = key()
    assert bumped != same
    monkeypatch.setattr(verdict_cache, "__version__", "999.0")
    assert key() not in (same, bumped)


def test_an_internal_judging_error_is_never_cached(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edge_certd.core.model import FileVerdict, Reason, Rejection
    from edge_certd.core.policy import Rules
    from edge_certd.store.verdict_cache import VerdictCache

    cache = VerdictCache(str(tmp_path), Rules(), ())
    failed = FileVerdict(
        source="x",
        format="unknown",
        content_sha256="cd" * 32,
        rejected=(Rejection(source="x", code=Reason.JUDGE_FAILED, message="internal error MemoryError"),),
    )
    fine = FileVerdict(source="y", format="pem", content_sha256="ef" * 32)
    cache.put(cache.key("cd" * 32, "drop"), failed)
    cache.put(cache.key("ef" * 32, "drop"), fine)
    cache.save()
    entries = json.loads((tmp_path / CACHE_NAME).read_text())["entries"]
    assert list(entries) == [cache.key("ef" * 32, "drop")]
