"""Full-chain files (Azure's certGen.sh: server or Edge CA certificate, intermediates and root in
one PEM): the root is trusted and the chain below it is a note, never a rejection, an alert or
"copy the root CA instead". A file of only leaves and intermediates stays a rejection."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from support.certs import CA, pem_bundle
from support.tree import Tree
from test_metrics import value

from edge_certd.core.judgement import JudgeContext, JudgeRequest, Rules
from edge_certd.core.model import Reason, SourceKind
from edge_certd.core.verdict import CHAIN_NOTE, MAX_CHAIN_FILE, judge_file
from edge_certd.sync.metrics import TEXTFILE_NAME

NOW = dt.datetime.now(dt.UTC)


def judged(data: bytes) -> object:
    return judge_file(
        JudgeRequest(source="chain.pem", data=data, kind=SourceKind.DROP),
        JudgeContext(rules=Rules(), now=NOW),
    )


def certgen_chain() -> tuple[CA, CA, bytes]:
    """What certGen.sh's full-chain file holds: Edge CA, intermediate, root, in that order."""
    root = CA.root("Azure_IoT_Hub_CA_Cert_Test_Only")
    intermediate = root.intermediate("Azure_IoT_Hub_Intermediate_Cert_Test_Only")
    edge_ca = intermediate.intermediate("iotedge-ca")
    leaf = edge_ca.issue_server("gateway", ["gateway.local"])
    return root, edge_ca, pem_bundle([leaf.cert, edge_ca.cert, intermediate.cert, root.cert])


def test_full_chain_file_trusts_its_root_and_notes_the_chain() -> None:
    root, _, data = certgen_chain()
    verdict = judged(data)
    assert [ca.subject for ca in verdict.accepted] == [root.cert.subject.rfc4514_string()]
    assert verdict.rejected == ()
    (note,) = verdict.ignored
    assert note.what.startswith(CHAIN_NOTE) and "CN=gateway" in note.what


def test_chain_only_file_stays_rejected() -> None:
    _, edge_ca, _ = certgen_chain()
    leaf = edge_ca.issue_server("gateway", ["gateway.local"])
    verdict = judged(leaf.chain_pem(include_root=False))
    assert verdict.accepted == ()
    assert {r.code for r in verdict.rejected} == {Reason.NOT_CA, Reason.NOT_SELF_SIGNED}
    assert verdict.ignored == ()


def test_a_chain_below_another_root_is_not_excused_by_names_alone() -> None:
    """An impostor root with the right name but another key: the names chain, the signatures
    do not, so the leaf stays a rejection beside the trusted impostor."""
    real = CA.root("Gateway Root")
    impostor = CA.root("Gateway Root")
    leaf = real.issue_server("gateway", ["gateway.local"])
    verdict = judged(pem_bundle([leaf.cert, impostor.cert]))
    assert len(verdict.accepted) == 1
    assert [r.code for r in verdict.rejected] == [Reason.NOT_CA]
    assert verdict.ignored == ()


def test_an_unrelated_leaf_beside_a_full_chain_stays_rejected() -> None:
    root, _, data = certgen_chain()
    stranger = CA.root("Someone Else").issue_server("other", ["other.local"])
    verdict = judged(data + stranger.cert_pem)
    assert [(r.subject or "").split(",")[0] for r in verdict.rejected] == ["CN=other"]
    assert len(verdict.ignored) == 1


def test_a_chain_under_a_refused_root_stays_rejected() -> None:
    old = NOW - dt.timedelta(days=3000)
    root = CA.root("Expired Root", not_before=old, not_after=NOW - dt.timedelta(days=1))
    leaf = root.issue_server("gateway", ["gateway.local"], not_before=old)
    verdict = judged(pem_bundle([leaf.cert, root.cert]))
    assert verdict.accepted == ()
    assert {r.code for r in verdict.rejected} == {Reason.NOT_CA, Reason.EXPIRED}


def test_a_long_chain_file_is_not_searched() -> None:
    root = CA.root("Deep Root")
    ca, certs = root, [root.cert]
    for i in range(MAX_CHAIN_FILE):
        ca = ca.intermediate(f"level {i}")
        certs.append(ca.cert)
    verdict = judged(pem_bundle(certs))
    assert len(verdict.accepted) == 1
    assert len(verdict.rejected) == MAX_CHAIN_FILE and verdict.ignored == ()


@pytest.fixture
def textfile_dir(tree: Tree) -> Path:
    directory = tree.root / "var/lib/prometheus/node-exporter"
    directory.mkdir(parents=True)
    tree.write_config(metrics__textfile_dir=str(directory))
    return directory


def test_sync_of_a_full_chain_counts_no_rejected_file(tree: Tree, textfile_dir: Path) -> None:
    _, _, data = certgen_chain()
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "azure-iot-test-only.chain.ca.cert.pem").write_bytes(data)
    synced = tree.cli("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["rejected_files_total"] == 0 and status["rejected"] == []
    assert len(status["trusted"]) == 1
    assert any(CHAIN_NOTE in item["what"] for item in status["ignored"])
    assert value(textfile_dir / TEXTFILE_NAME, "edge_certd_rejected_files") == 0
    text = tree.cli("status").stdout
    assert "copy the root CA" not in text


def test_sync_of_a_chain_without_its_root_counts_a_rejected_file(tree: Tree, textfile_dir: Path) -> None:
    _, edge_ca, _ = certgen_chain()
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "chain.pem").write_bytes(edge_ca.issue_server("gw", ["gw.local"]).chain_pem())
    assert tree.cli("sync").returncode == 3
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["rejected_files_total"] == 1
    assert value(textfile_dir / TEXTFILE_NAME, "edge_certd_rejected_files") == 1
