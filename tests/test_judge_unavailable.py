"""A judge failure that is not the file's fault never removes trust (issue 19.4).

Real syncs in a temporary tree (the real update-ca-certificates), a real judge process,
and a real SIGKILL of its child from outside, as the OOM killer or a process running as the
judge's user would send.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal

from support.certs import CA
from support.invariants import installed_cas
from support.tree import Tree

from edge_certd.core.model import Reason
from edge_certd.sync.engine import Engine
from edge_certd.worker.pool import JudgeWorker


class KillingWorker(JudgeWorker):
    """SIGKILLs the judge from outside while it holds a request (the first poll comes
    before any answer is read, so the kill always lands mid-request)."""

    def __init__(self) -> None:
        super().__init__(socket_path="", poll=self._kill_judge)
        self.kills = 0

    def _kill_judge(self) -> None:
        pid = self.server_pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.kills += 1


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def test_a_killed_judge_keeps_the_installed_root_and_a_retry_judges_it(tree: Tree) -> None:
    root = CA.root("Gateway Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    first = Engine(tree.load()).sync()
    assert _sha(root) in {ca.sha256 for ca in first.added}
    # New bytes for the same root (what an upgrade does to every verdict: judged afresh).
    (tree.drop / "root.pem").write_bytes(root.cert_pem + b"\n")
    killer = KillingWorker()
    try:
        held = Engine(tree.load(), worker=killer).sync()
    finally:
        killer.close()
    assert killer.kills
    assert held.judge_unavailable and held.judge_unavailable[0].endswith("root.pem")
    assert not held.removed, "a judge failure removed a trusted root"
    assert _sha(root) in installed_cas(tree)
    assert not [r for r in held.rejected if r.code in (Reason.JUDGE_LIMIT, Reason.JUDGE_FAILED)]
    assert "judge_unavailable" in [n.code for n in held.notes]
    status = json.loads((tree.state / "status.json").read_text())
    assert status["judge_unavailable_total"] == 1
    # The retry: nothing about the failure was remembered, the root is judged and stays.
    retried = Engine(tree.load()).sync()
    assert not retried.judge_unavailable and not retried.removed and not retried.rejected
    assert _sha(root) in installed_cas(tree)


def test_an_unreachable_judge_holds_every_file_and_installs_nothing_new(tree: Tree) -> None:
    old, new = CA.root("Old Root"), CA.root("New Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "old.pem").write_bytes(old.cert_pem)
    Engine(tree.load()).sync()
    (tree.drop / "old.pem").write_bytes(old.cert_pem + b"\n")
    (tree.drop / "new.pem").write_bytes(new.cert_pem)
    absent = JudgeWorker(socket_path=str(tree.state / "no-judge-here"))
    result = Engine(tree.load(), worker=absent).sync()
    assert len(result.judge_unavailable) == 2
    assert _sha(old) in installed_cas(tree) and _sha(new) not in installed_cas(tree)
    assert not result.removed and not result.added
    # Works: with a judge, the new root comes in and the old one stays.
    result = Engine(tree.load()).sync()
    assert {_sha(old), _sha(new)} <= set(installed_cas(tree)) and not result.removed
