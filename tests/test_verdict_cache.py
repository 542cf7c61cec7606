"""The verdict cache gives what a fresh judgement would, or nothing."""

from __future__ import annotations

import datetime as dt
import json

from certs import CA
from conftest import Tree
from oddcerts import pem, self_signed

from edge_certd.store.verdict_cache import CACHE_NAME
from edge_certd.sync.engine import Engine


def judged(tree: Tree, now: dt.datetime | None = None) -> list[tuple[str, list[str], list[str]]]:
    verdicts, _ = Engine(tree.load()).judge_sources(now or dt.datetime.now(dt.UTC))
    return [(v.source, [c.sha256 for c in v.accepted], [r.code for r in v.rejected])
            for v in verdicts]


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
