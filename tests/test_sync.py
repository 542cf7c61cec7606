"""`edge-certd sync` against a temporary tree with the real update-ca-certificates."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from support.certs import CA
from support.oddcerts import pem, self_signed
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints
from edge_certd.core.plan import OWNED_FILE


def fingerprints(path: Path) -> set[str]:
    return pem_fingerprints(path.read_bytes()) if path.exists() else set()


def sha(ca: CA) -> str:
    import hashlib

    return hashlib.sha256(ca.der).hexdigest()


def drop(tree: Tree, name: str, data: bytes) -> Path:
    tree.drop.mkdir(parents=True, exist_ok=True)
    path = tree.drop / name
    path.write_bytes(data)
    return path


def test_dropped_root_is_installed_everywhere_once(tree: Tree) -> None:
    root = CA.root("Contoso Root CA")
    drop(tree, "azure-iot-test-only.root.ca.cert.pem", root.cert_pem)
    result = tree.cli("sync")
    assert result.returncode == 0, result.stderr
    files = os.listdir(tree.ca_dir)
    assert len(files) == 1 and OWNED_FILE.match(files[0])
    assert files[0].startswith("Contoso-Root-CA-" + sha(root)[:16])
    assert stat.S_IMODE(os.stat(tree.ca_dir / files[0]).st_mode) == 0o644
    assert sha(root) in fingerprints(tree.system_bundle)
    assert fingerprints(tree.edge_roots) == {sha(root)}
    assert sha(root) in fingerprints(tree.bundles / "ca-bundle.pem")
    assert tree.update_runs() == 1
    assert "1 added, 0 removed" in result.stdout


def test_second_sync_changes_nothing_and_runs_no_update(tree: Tree) -> None:
    drop(tree, "root.pem", CA.root().cert_pem)
    assert tree.cli("sync").returncode == 0
    mtimes = {p: p.stat().st_mtime_ns for p in tree.bundles.iterdir()}
    manifest = (tree.state / "manifest.json").read_bytes()
    assert tree.cli("sync").returncode == 0
    assert tree.update_runs() == 1
    assert {p: p.stat().st_mtime_ns for p in tree.bundles.iterdir()} == mtimes
    assert (tree.state / "manifest.json").read_bytes() == manifest


def test_installed_file_is_reserialised_not_copied(tree: Tree) -> None:
    root = CA.root("Texty")
    drop(tree, "texty.pem", b"Bag Attributes\n  friendlyName: evil\n" + root.cert_pem + b"trailer\n")
    tree.cli("sync")
    (installed,) = tree.ca_dir.iterdir()
    assert installed.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"evil" not in installed.read_bytes()


def test_same_ca_under_two_names_is_installed_once_and_kept_until_both_go(tree: Tree) -> None:
    root = CA.root("Twice")
    first = drop(tree, "a.pem", root.cert_pem)
    second = drop(tree, "b.der", root.der)
    tree.cli("sync")
    assert len(os.listdir(tree.ca_dir)) == 1
    listed = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    assert sorted(listed[0]["sources"]) == [str(first), str(second)]
    first.unlink()
    tree.cli("sync")
    assert len(os.listdir(tree.ca_dir)) == 1 and tree.update_runs() == 1
    second.unlink()
    tree.cli("sync")
    assert os.listdir(tree.ca_dir) == []
    assert sha(root) not in fingerprints(tree.system_bundle)
    assert not [p for p in tree.etc_certs.iterdir() if p.is_symlink() and "Twice" in p.name]


def test_removal_runs_fresh_and_touches_nothing_it_does_not_own(tree: Tree) -> None:
    foreign = tree.root / "usr/local/share/ca-certificates/site-root.crt"
    foreign.write_bytes(pem(self_signed("Site Root")))
    tree.ca_dir.mkdir(parents=True)
    stranger = tree.ca_dir / "README.txt"
    stranger.write_text("not ours")
    path = drop(tree, "root.pem", CA.root().cert_pem)
    tree.cli("sync")
    path.unlink()
    tree.cli("sync")
    assert foreign.exists() and stranger.exists()
    assert len(fingerprints(tree.system_bundle)) == 4  # 3 Mozilla roots + the site root


def test_mixed_good_and_bad_files_install_exactly_the_good(tree: Tree) -> None:
    good = [CA.root(f"Good {i}") for i in range(3)]
    for i, ca in enumerate(good):
        drop(tree, f"good{i}.pem", ca.cert_pem)
    drop(tree, "leaf.pem", good[0].issue_server("gw", ["gw"]).cert_pem)
    drop(tree, "garbage.crt", b"this is not a certificate")
    drop(tree, "inter.pem", good[1].intermediate("Inter").cert_pem)
    result = tree.cli("sync")
    assert result.returncode == 3
    assert fingerprints(tree.edge_roots) == {sha(ca) for ca in good}
    for name, code in (
        ("leaf.pem", "not_ca"),
        ("garbage.crt", "unparseable"),
        ("inter.pem", "not_self_signed"),
    ):
        assert name in result.stdout and code in result.stdout


def test_file_with_private_key_is_refused_tightened_and_never_copied(tree: Tree) -> None:
    root = CA.root("Leaky")
    path = drop(tree, "leaky.pem", root.cert_pem + root.key_pem)
    path.chmod(0o644)
    result = tree.cli("sync")
    assert result.returncode == 3 and "private key" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == root.cert_pem + root.key_pem  # source untouched otherwise
    assert not tree.ca_dir.exists() or os.listdir(tree.ca_dir) == []
    key_body = root.key_pem.split(b"\n")[1]
    for written in [*tree.bundles.rglob("*"), *tree.state.glob("*.json"), tree.env_file]:
        if written.is_file():
            assert key_body not in written.read_bytes(), written
    assert key_body.decode() not in result.stdout + result.stderr


def test_oversized_file_is_rejected_without_reading_it_all(tree: Tree) -> None:
    tree.write_config(policy__max_file_bytes=4096)
    drop(tree, "huge.pem", CA.root().cert_pem + b"#" * 10000)
    result = tree.cli("sync")
    assert result.returncode == 3 and "too_large" in result.stdout


def test_failing_update_keeps_previous_state_and_is_retried(tree: Tree) -> None:
    first = CA.root("First")
    drop(tree, "first.pem", first.cert_pem)
    tree.cli("sync")
    before = tree.system_bundle.read_bytes()
    tree.write_config(trust_store__update_command=["/bin/sh", "-c", "echo boom >&2; exit 1"])
    drop(tree, "second.pem", CA.root("Second").cert_pem)
    result = tree.cli("sync")
    assert result.returncode == 1 and "failed (exit 1)" in result.stderr
    assert tree.system_bundle.read_bytes() == before
    assert len(os.listdir(tree.ca_dir)) == 1  # rolled back
    assert fingerprints(tree.edge_roots) == {sha(first)}
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["last_sync"]["result"] == "failed"
    tree.write_config(trust_store__update_command=[str(tree.root / "update-wrapper")])
    assert tree.cli("sync").returncode == 0
    assert len(os.listdir(tree.ca_dir)) == 2


def test_env_file_works_from_a_shell(tree: Tree) -> None:
    drop(tree, "root.pem", CA.root().cert_pem)
    tree.cli("sync")
    import subprocess

    out = subprocess.run(
        [
            "sh",
            "-c",
            f"set -a; . '{tree.env_file}'; set +a; echo \"$NODE_EXTRA_CA_CERTS|$REQUESTS_CA_BUNDLE\"",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == f"{tree.edge_roots}|{tree.bundles / 'ca-bundle.pem'}"


def test_on_change_commands_run_after_a_change_only(tree: Tree) -> None:
    marker = tree.root / "changed.log"
    tree.write_config(
        on_change__commands=[["/bin/sh", "-c", f"echo x >> '{marker}'"]],
        on_change__restart_units=["demo.service"],
        on_change__systemctl=["/bin/sh", "-c", f"echo \"$@\" >> '{marker}'", "sh"],
    )
    drop(tree, "root.pem", CA.root().cert_pem)
    tree.cli("sync")
    tree.cli("sync")
    assert marker.read_text().splitlines() == ["try-restart demo.service", "x"]


def test_failing_on_change_command_is_logged_not_fatal(tree: Tree) -> None:
    tree.write_config(on_change__commands=[["/bin/false"]])
    drop(tree, "root.pem", CA.root().cert_pem)
    result = tree.cli("sync")
    assert result.returncode == 0 and "/bin/false" in result.stderr


def test_corrupt_manifest_is_rebuilt(tree: Tree) -> None:
    root = CA.root()
    drop(tree, "root.pem", root.cert_pem)
    tree.cli("sync")
    (tree.state / "manifest.json").write_text('{"cas": [ {"sha')
    result = tree.cli("sync")
    assert result.returncode == 0 and "corrupt" in result.stdout + result.stderr
    assert json.loads(tree.cli("list", "--json").stdout)["trusted"][0]["sha256"] == sha(root)
    assert tree.update_runs() == 1


def test_a_target_that_cannot_be_written_holds_back_nothing_else(tree: Tree) -> None:
    """The Java truststore's path is taken by a directory: Java fails, every other target,
    the manifest and the status move on, and Java catches up once it can be written."""
    from edge_certd.targets.java import truststore_fingerprints

    tree.write_config(bundles__java="jks")
    root = CA.root("Isolated Root")
    sha = hashlib.sha256(root.der).hexdigest()
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    blocker = tree.bundles / "java-truststore.jks"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("not a truststore")
    done = tree.cli("sync")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "java not updated (the rest is)" in done.stdout
    assert sha in pem_fingerprints(tree.edge_roots.read_bytes())
    assert sha in pem_fingerprints(tree.system_bundle.read_bytes())
    assert "NODE_EXTRA_CA_CERTS" in tree.env_file.read_text()
    manifest = json.loads((tree.state / "manifest.json").read_bytes())
    assert [item["sha256"] for item in manifest["cas"]] == [sha]
    status = json.loads(tree.cli("status", "--json").stdout)
    assert status["last_sync"]["result"] == "partial"
    assert [f["target"] for f in status["target_failures"]] == ["java"]
    # Fixed: the next sync writes Java, and only Java.
    (blocker / "keep").unlink()
    blocker.rmdir()
    runs = tree.update_runs
    again = tree.cli("sync")
    assert again.returncode == 0, again.stdout + again.stderr
    assert tree.update_runs == runs, "the system store was already right"
    assert sha in truststore_fingerprints(blocker.read_bytes(), "jks", "changeit")


def test_a_certificate_java_cannot_take_is_left_out_of_java_alone(tree: Tree) -> None:
    """Another tool put a broken certificate into the system bundle. The Java truststore
    is built without it (found by halving where the serializer refuses it; keytool on
    Debian 12 takes it as it is), and our CA is in Java either way."""
    import base64

    from edge_certd.targets.java import truststore_fingerprints

    tree.write_config(bundles__java="pkcs12")
    other = tree.root / "usr/local/share/ca-certificates/other-tool"
    other.mkdir(parents=True)
    broken = base64.encodebytes(b"\x30\x03\x02\x01\x05")
    (other / "broken.crt").write_bytes(
        b"-----BEGIN CERTIFICATE-----\n" + broken + b"-----END CERTIFICATE-----\n"
    )
    root = CA.root("Java Isolation Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    done = tree.cli("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert broken in tree.system_bundle.read_bytes(), "the broken certificate reached the bundle"
    store = tree.bundles / "java-truststore.p12"
    held = truststore_fingerprints(store.read_bytes(), "pkcs12", "changeit")
    assert hashlib.sha256(root.der).hexdigest() in held
    assert len(held) > 1, "the system's own roots are in Java too"
