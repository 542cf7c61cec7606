"""`remove` (and `add`) in the daemon run on the daemon's engine: its warm judge worker and
its watchdog heartbeat, not a fresh engine that has neither."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from support.certs import CA
from support.tree import Tree

from edge_certd.config import load_config
from edge_certd.core.errors import UsageError
from edge_certd.core.model import SyncResult
from edge_certd.core.pem import pem_fingerprints
from edge_certd.sync import operations
from edge_certd.sync.engine import Engine
from edge_certd.worker.pool import JudgeWorker


class RecordingEngine(Engine):
    """A real engine that counts its syncs."""

    syncs = 0

    def sync(self, now: dt.datetime | None = None, busy: frozenset[str] = frozenset()) -> SyncResult:
        self.syncs += 1
        return super().sync(now=now, busy=busy)


def _trusted(tree: Tree) -> set[str]:
    return pem_fingerprints(tree.edge_roots.read_bytes()) if tree.edge_roots.exists() else set()


def test_remove_syncs_with_the_engine_and_worker_it_is_given(tree: Tree) -> None:
    config, _ = load_config(str(tree.config_path))
    root = CA.root("Engine Root")
    sha = hashlib.sha256(root.der).hexdigest()
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    worker = JudgeWorker(socket_path="")  # the judge as this process's child
    try:
        engine = RecordingEngine(config, worker=worker)
        engine.sync()
        assert sha in _trusted(tree)
        warm = worker.server_pid
        assert warm is not None
        operations.remove(config, sha[:16], engine=engine)
        assert engine.syncs == 2, "remove must sync with the engine it was given"
        assert worker.server_pid == warm and worker.spawned == 1, (
            "and with that engine's judge, not a new one"
        )
        assert sha not in _trusted(tree)
    finally:
        worker.close()


def test_remove_without_an_engine_still_works_for_the_cli(tree: Tree) -> None:
    config, _ = load_config(str(tree.config_path))
    root = CA.root("CLI Engine Root")
    sha = hashlib.sha256(root.der).hexdigest()
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    operations.sync(config)
    operations.remove(config, sha[:16])
    assert sha not in _trusted(tree)


def test_remove_refuses_a_name_longer_than_any_it_gives(tree: Tree) -> None:
    config, _ = load_config(str(tree.config_path))
    with pytest.raises(UsageError, match="at most 255") as refused:
        operations.remove(config, "\n" * 5000)
    assert len(str(refused.value)) < 200
