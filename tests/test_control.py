"""The control socket: with the daemon running, `add`, `remove` and `sync` are done by the
daemon, which logs them and updates STATUS= before the CLI returns; who may ask what is
decided by the peer's real credentials (SO_PEERCRED), tested with real users.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints

REPO = Path(__file__).resolve().parent.parent
# The client runs as `nobody`, who can run Debian's python3 but not a Python under /root.
SYSTEM_PYTHON = "/usr/bin/python3"


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def _trusted(tree: Tree) -> set[str]:
    return pem_fingerprints(tree.edge_roots.read_bytes()) if tree.edge_roots.exists() else set()


def _as_user(tree: Tree, user: str, group: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI as another user, with a copy of the config that user may read."""
    socket_dir = Path(tree.config()["control_socket"]).parent
    readable = socket_dir / "config.yaml"
    shutil.copyfile(tree.config_path, readable)
    readable.chmod(0o644)
    socket_dir.chmod(0o755)
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "edge_certd", "--config", str(readable), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=str(REPO),
        user=user,
        group=group,
        env={"PATH": "/usr/bin:/bin", "EDGE_CERTD_LOG": "stderr", "HOME": "/"},
    )


def _world_readable_copy(tree: Tree, ca: CA, name: str) -> Path:
    """Beside the tree's socket: pytest's own temporary directories are root's alone."""
    folder = Path(tree.config()["control_socket"]).parent
    folder.chmod(0o755)
    path = folder / name
    path.write_bytes(ca.cert_pem)
    path.chmod(0o644)
    return path


def test_add_and_remove_go_through_the_daemon_and_status_follows_at_once(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Control Root")
    source = tmp_path / "root.pem"
    source.write_bytes(root.cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        added = tree.cli("add", str(source))
        assert added.returncode == 0, added.stdout + added.stderr
        assert "trusts CN=Control Root" in added.stdout
        # The daemon did the work: its STATUS= already says so when the CLI returns...
        assert daemon.last_status().startswith("1 CA trusted"), daemon.report()
        # ...and the journal line is the daemon's, not the CLI's.
        assert "installed root CA" in daemon.log()
        assert "installed root CA" not in added.stderr
        removed = tree.cli("remove", _sha(root)[:16])
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert daemon.last_status().startswith("0 CAs trusted"), daemon.report()
        assert _sha(root) not in _trusted(tree)
        assert "stays removed" in removed.stdout


def test_sync_through_the_daemon_answers_for_every_source(tree: Tree) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "junk.pem").write_bytes(b"not a certificate")
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        done = tree.cli("sync")
        assert done.returncode == 3, done.stdout + done.stderr
        assert "junk.pem" in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="running the CLI as other users needs root")
def test_who_may_ask_what_is_decided_by_the_peers_credentials(tree: Tree, tmp_path: Path) -> None:
    # nobody's own group stands in for edge-certd's: its members may add and sync.
    tree.write_config(sources__trusted_group="nogroup")
    member_root = CA.root("Member Root")
    file = _world_readable_copy(tree, member_root, "member.pem")
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        added = _as_user(tree, "nobody", "nogroup", "add", str(file))
        assert added.returncode == 0, added.stdout + added.stderr
        assert _sha(member_root) in _trusted(tree)
        denied = _as_user(tree, "nobody", "nogroup", "remove", _sha(member_root)[:16])
        assert denied.returncode == 2 and "needs root" in denied.stderr, denied.stderr
        assert _sha(member_root) in _trusted(tree)
        # Someone outside the group may not even add.
        tree.write_config(sources__trusted_group="root")
        # The mark before the signal: a quick reload may say READY=1 before a later mark.
        mark = daemon.mark()
        daemon.signal(__import__("signal").SIGHUP)
        daemon.wait_ready(mark)
        other = _as_user(tree, "nobody", "nogroup", "add", str(file))
        assert other.returncode == 2, other.stdout + other.stderr
        assert "permission denied" in other.stderr or "only root and members" in other.stderr


def test_add_sends_the_file_not_its_name(tree: Tree, tmp_path: Path) -> None:
    """The daemon reads what the client opened; a name the client may not read is refused
    by the client's own open, never opened by the daemon on its behalf."""
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        fifo = tmp_path / "fifo.pem"
        os.mkfifo(fifo)
        refused = tree.cli("add", str(fifo))
        assert refused.returncode == 2 and "not a regular file" in refused.stderr, refused.stderr
        secret = tmp_path / "secret.pem"
        secret.write_bytes(CA.root("Secret Root").cert_pem)
        secret.chmod(0o600)
        config = yaml.safe_load(tree.config_path.read_text())
        assert config["control_socket"].endswith("/control")
        if os.geteuid() == 0:
            other = _as_user(tree, "nobody", "nogroup", "add", str(secret))
            assert other.returncode == 2, other.stdout + other.stderr
            assert "cannot be opened" in other.stderr or "permission denied" in other.stderr


def test_without_a_daemon_root_does_the_work_itself(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Offline Root")
    source = tmp_path / "root.pem"
    source.write_bytes(root.cert_pem)
    done = tree.cli("add", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _sha(root) in _trusted(tree)
