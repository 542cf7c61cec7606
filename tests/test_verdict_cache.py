"""The verdict cache gives what a fresh judgement would, or nothing."""

from __future__ import annotations

import datetime as dt
import json
import time

from support.certs import CA
from support.oddcerts import pem, self_signed
from support.tree import Tree
from test_judging_hardened import _pfx_with

from edge_certd.core.judgement import JudgeContext, JudgeLimits, Rules
from edge_certd.core.model import Reason
from edge_certd.store.verdict_cache import CACHE_NAME, VerdictCache
from edge_certd.sync.engine import Engine
from edge_certd.worker.pool import JudgeWorker


def judged(tree: Tree, now: dt.datetime | None = None) -> list[tuple[str, list[str], list[str]]]:
    verdicts = Engine(tree.load()).judge_sources(now or dt.datetime.now(dt.UTC)).verdicts
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
    from edge_certd.store import verdict_cache

    def key() -> str:
        context = JudgeContext(rules=Rules(), now=dt.datetime.now(dt.UTC))
        return verdict_cache.VerdictCache(str(tmp_path), context).key("ab" * 32, "drop")

    same = key()
    assert key() == same  # works: the same judge answers from its own cache
    monkeypatch.setattr(verdict_cache, "JUDGE_VERSION", verdict_cache.JUDGE_VERSION + 1)
    bumped = key()
    assert bumped != same
    monkeypatch.setattr(verdict_cache, "__version__", "999.0")
    assert key() not in (same, bumped)


def test_an_internal_judging_error_is_never_cached(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edge_certd.core.model import FileVerdict, Reason, Rejection

    cache = VerdictCache(str(tmp_path), JudgeContext(rules=Rules(), now=dt.datetime.now(dt.UTC)))
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


def test_new_judge_limits_are_not_answered_from_the_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A judge_limit verdict is the file's fault under those limits only."""

    def key(cpu: int) -> str:
        context = JudgeContext(
            rules=Rules(), now=dt.datetime.now(dt.UTC), limits=JudgeLimits(cpu_seconds=cpu)
        )
        return VerdictCache(str(tmp_path), context).key("ab" * 32, "drop")

    assert key(5) == key(5)
    assert key(5) != key(6)


class CountingWorker(JudgeWorker):
    def __init__(self) -> None:
        super().__init__(socket_path="")
        self.judged = 0

    def submit(self, requests, context):  # type: ignore[no-untyped-def]
        self.judged += len(requests)
        super().submit(requests, context)


def test_a_flood_of_sealed_pfx_files_is_judged_once(tree: Tree) -> None:
    """Issue 19.6: 150 sealed PFX files of 1,000,000 MAC iterations cost 69 s at every sync."""
    tree.drop.mkdir(parents=True)
    for i in range(12):
        (tree.drop / f"sealed-{i}.pfx").write_bytes(_pfx_with(1_000_000 - i))  # distinct bytes
    for i in range(40):
        (tree.drop / f"junk-{i}.txt").write_bytes(b"junk %d" % i)  # refused in microseconds
    worker = CountingWorker()
    try:
        engine = Engine(tree.load(), worker=worker)
        first = engine.judge_sources(dt.datetime.now(dt.UTC))
        assert worker.judged == 52
        sealed = [v for v in first.verdicts if v.source.endswith(".pfx")]
        assert {r.code for v in sealed for r in v.rejected} == {Reason.PKCS12_SEALED}
        started = time.monotonic()
        second = Engine(tree.load(), worker=worker).judge_sources(dt.datetime.now(dt.UTC))
        took = time.monotonic() - started
        assert worker.judged == 52 + 40, "the sealed files were judged again"  # junk is not cached
        assert [v.rejected[0].code for v in second.verdicts] == [v.rejected[0].code for v in first.verdicts]
        assert took < 5.0, f"a sync of cached sealed files took {took:.1f} s"
    finally:
        worker.close()
    entries = json.loads((tree.state / CACHE_NAME).read_text())["entries"]
    assert len(entries) == 12  # the costly ones, not the junk
