"""`edge-certd add` and `remove` while the daemon syncs: no update is lost.

Several CLI processes start at once next to the running daemon, while a thread keeps
adding and deleting another root in the drop directory so the daemon syncs throughout.
Every command must succeed, and the end state must hold every add and every remove.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from support.certs import CA
from support.daemonrun import RunningDaemon
from support.invariants import check_settled, fingerprints
from support.tree import Tree

from edge_certd.store.state import BLOCKED_NAME

REPO = Path(__file__).resolve().parent.parent


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


class Churn:
    """Toggles one root in and out of the drop directory until stopped."""

    def __init__(self, tree: Tree, ca: CA) -> None:
        self.path = tree.drop / "churn.pem"
        self.data = ca.cert_pem
        self.present = False
        self.toggles = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.12):
            if self.present:
                self.path.unlink()
            else:
                temp = self.path.with_name(".churn.part")
                temp.write_bytes(self.data)
                temp.rename(self.path)
            self.present = not self.present
            self.toggles += 1

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _start(tree: Tree, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"EDGE_CERTD_LOG": "stderr", "PATH": "/usr/bin:/bin:/usr/sbin"},
    )


def test_add_and_remove_during_daemon_syncs_lose_nothing(tree: Tree) -> None:
    tree.write_config(watch__settle_ms=50)
    kept = [CA.root(f"Kept {i}") for i in range(4)]
    tree.drop.mkdir(parents=True, exist_ok=True)
    for i, ca in enumerate(kept):
        (tree.drop / f"kept{i}.pem").write_bytes(ca.cert_pem)
    incoming = tree.root / "incoming"
    incoming.mkdir()
    churner = CA.root("Churn")
    expected = {sha(ca) for ca in kept}
    removed: set[str] = set()
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        assert fingerprints(tree.edge_roots) == expected
        with Churn(tree, churner) as churn:
            for round_ in range(2):
                added = [CA.root(f"Added {round_}.{i}") for i in range(5)]
                for i, ca in enumerate(added):
                    (incoming / f"added-{round_}-{i}.pem").write_bytes(ca.cert_pem)
                going = kept[2 * round_ : 2 * round_ + 2]
                procs = [
                    _start(tree, "add", str(incoming / f"added-{round_}-{i}.pem")) for i in range(len(added))
                ]
                procs += [_start(tree, "remove", sha(ca)[:16]) for ca in going]
                for proc in procs:
                    out, err = proc.communicate(timeout=120)
                    assert proc.returncode == 0, f"{proc.args[-2:]}: {out}\n{err}"
                expected |= {sha(ca) for ca in added}
                expected -= {sha(ca) for ca in going}
                removed |= {sha(ca) for ca in going}
                # The churn makes the daemon sync in between rounds: each such sync moves
                # the CA count, so it sends STATUS=.
                mark = daemon.mark()
                daemon.wait_status(lambda _line: True, mark, what="a daemon sync between rounds")
        assert churn.toggles >= 5, "the daemon was not kept busy"
        final = expected | ({sha(churner)} if churn.present else set())

        def agreed() -> bool:
            manifest = json.loads((tree.state / "manifest.json").read_bytes())
            return (
                fingerprints(tree.edge_roots) == final
                and {item["sha256"] for item in manifest["cas"]} == final
            )

        # The churn's last toggles may or may not have had their sync yet. A reload syncs
        # after all of them, so the end of its sync is a point where the state is final.
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        daemon.wait_synced(mark, check=agreed, what="the daemon to settle on every add and remove")
        listed = {item["sha256"] for item in json.loads(tree.cli("list", "--json").stdout)["trusted"]}
        assert listed == final
        blocked = set(json.loads((tree.state / BLOCKED_NAME).read_text()))
        assert blocked == removed
        assert daemon.alive
    assert daemon.proc.returncode == 0, daemon.log()
    roots = fingerprints(tree.system_bundle) - final
    check_settled(tree, final, roots)
    # Nothing left half-done: one more sync changes nothing and runs no update.
    runs = tree.update_runs()
    assert tree.cli("sync").returncode == 0
    assert tree.update_runs() == runs
    check_settled(tree, final, roots)
