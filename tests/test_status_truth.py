"""What the device says matches what it is (issue 13): a tightened key file stays listed,
a CA the operator removed and a technician dropped again is said once and shown, `add`
answers for its own files, and an expiry warning is given once per threshold.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from support.certs import CA
from support.daemonrun import RunningDaemon, wait_until
from support.tree import Tree


def _sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def _status(tree: Tree) -> dict:  # type: ignore[type-arg]
    done = tree.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_key_file_stays_listed_while_other_drops_come_and_go(tree: Tree) -> None:
    root, other = CA.root("Keyed Root"), CA.root("Other Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (tree.drop / "leaky.pem").write_bytes(root.cert_pem + root.key_pem)
        daemon.wait_synced(mark, status="1 file rejected")
        assert (tree.drop / "leaky.pem").stat().st_mode & 0o777 == 0o600
        # The daemon's own chmod is not a write: the file is not "being written".
        mark = daemon.mark()
        (tree.drop / "other.pem").write_bytes(other.cert_pem)
        line = daemon.wait_synced(mark, status="1 CA trusted")
        assert "1 file rejected" in line, line
        rejected = {Path(r["source"]).name for r in _status(tree)["rejected"]}
        assert rejected == {"leaky.pem"}
        assert daemon.log().count("contains a private key") == 1, "logged again as if new"


def test_a_removed_ca_dropped_again_stays_removed_and_says_so_once(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Removed Root")
    source = tmp_path / "root.pem"
    source.write_bytes(root.cert_pem)
    assert tree.cli("add", str(source)).returncode == 0
    removed = tree.cli("remove", _sha(root)[:16])
    assert removed.returncode == 0, removed.stderr
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        mark = daemon.mark()
        (tree.drop / "again.pem").write_bytes(root.cert_pem)
        daemon.wait_synced(mark, status="0 CAs trusted")
        mark = daemon.mark()
        (tree.drop / "unrelated.pem").write_bytes(b"junk")
        daemon.wait_synced(mark, status="1 file rejected")
        assert daemon.log().count("stays removed") == 1, daemon.log()
    notes = [n["message"] for n in _status(tree)["notes"]]
    assert any("stays removed" in n and "edge-certd add FILE" in n for n in notes), notes
    listed = tree.cli("status")
    assert "stays removed" in listed.stdout


def test_add_answers_for_its_own_files_only(tree: Tree, tmp_path: Path) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "someone-elses.pem").write_bytes(b"not a certificate")
    root = CA.root("Own Root")
    source = tmp_path / "own.pem"
    source.write_bytes(root.cert_pem)
    done = tree.cli("add", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 other file in the sources is rejected" in done.stdout
    assert "someone-elses.pem" not in done.stdout
    # `sync` answers for every source.
    assert tree.cli("sync").returncode == 3


def test_an_expiry_warning_is_given_once_per_threshold(tree: Tree) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=10, hours=1)
    root = CA.root("Ten Days Root", not_after=soon)
    tree.write_config(expiry__warn_days=[30, 7], expiry__check_interval=1)
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        # Three expiry checks at least: daemon.json records each one.
        seen: set[str] = set()

        def checked() -> bool:
            stamp = daemon.record().get("expiry_checked")
            if stamp:
                seen.add(stamp)
            return len(seen) >= 3

        wait_until(checked, 120, "three expiry checks")
        assert daemon.log().count("expires in 10 days") == 1, daemon.log()
    listed = tree.cli("list", "--json")
    (item,) = json.loads(listed.stdout)["trusted"]
    assert item["days_left"] == 10
