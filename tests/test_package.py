"""Roots packages: `edge-certd package` builds a reproducible .deb with the real dpkg-deb, and
package_roots_dir's subdirectories are sources that come and go with the package.

Nothing is installed on this machine: the .deb is only read back with dpkg-deb, and the
roots directory is a temporary tree named in the test configuration.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.certs import CA
from support.tree import Tree, require_tool

from edge_certd.config import parse_config
from edge_certd.core.errors import ConfigError, UsageError
from edge_certd.daemon.watcher import SourceWatcher
from edge_certd.package import check_name, check_version, minimum_edge_certd
from edge_certd.sync import report
from edge_certd.sync.engine import Engine

NAME = "contoso-gateway-roots"


@pytest.fixture
def roots(tree: Tree) -> Path:
    """A package roots directory inside the tree, named in its configuration."""
    path = tree.root / "usr/share/edge-certd/roots.d"
    path.mkdir(parents=True)
    tree.write_config(package_roots_dir=str(path))
    return path


def _pem(path: Path, ca: CA) -> Path:
    path.write_bytes(ca.cert_pem)
    return path


def _package(tree: Tree, *args: str) -> subprocess.CompletedProcess[str]:
    require_tool("dpkg-deb")
    return tree.cli("package", *args)


def _members(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines()]


# -- building ---------------------------------------------------------------------------------


def test_same_inputs_give_the_same_bytes_whatever_the_order_and_the_clock(tree: Tree, tmp_path: Path) -> None:
    one, two = _pem(tmp_path / "a.pem", CA.root("Root A")), _pem(tmp_path / "b.pem", CA.root("Root B"))
    first = _package(
        tree, str(one), str(two), "--name", NAME, "--version", "1", "--output", str(tmp_path / "x")
    )
    assert first.returncode == 0, first.stderr
    time.sleep(1.1)  # a timestamp from the clock would now differ
    os.utime(one)
    second = _package(
        tree, str(two), str(one), "--name", NAME, "--version", "1", "--output", str(tmp_path / "y")
    )
    assert second.returncode == 0, second.stderr
    deb_x, deb_y = tmp_path / "x" / f"{NAME}_1_all.deb", tmp_path / "y" / f"{NAME}_1_all.deb"
    assert deb_x.read_bytes() == deb_y.read_bytes()
    other = _package(tree, str(one), "--name", NAME, "--version", "1", "--output", str(tmp_path / "z"))
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "z" / f"{NAME}_1_all.deb").read_bytes() != deb_x.read_bytes()


def test_package_holds_one_pem_per_root_in_its_own_directory_and_depends_on_edge_certd(
    tree: Tree, tmp_path: Path
) -> None:
    root = CA.root("Contoso Gateway Root")
    # The same root twice, once as DER: one file in the package.
    der = tmp_path / "root.der"
    der.write_bytes(root.der)
    r = _package(
        tree,
        str(_pem(tmp_path / "r.pem", root)),
        str(der),
        "--name",
        NAME,
        "--version",
        "2024.1-1",
        "--output",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    deb = Path(re.search(r"^(\S+\.deb):", r.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert deb.name == f"{NAME}_2024.1-1_all.deb"
    sha = hashlib.sha256(root.der).hexdigest()
    pem_path = f"./usr/share/edge-certd/roots.d/{NAME}/Contoso-Gateway-Root-{sha[:16]}.pem"
    assert [m for m in _members(deb) if m.endswith(".pem")] == [pem_path]
    assert f"./usr/share/doc/{NAME}/copyright" in _members(deb)
    assert f"./usr/share/doc/{NAME}/changelog.Debian.gz" in _members(deb)  # a revision: not native
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert all(" root/root " in line for line in listing.splitlines())
    assert all(line.startswith(("drwxr-xr-x", "-rw-r--r--")) for line in listing.splitlines())

    field = lambda name: subprocess.run(  # noqa: E731
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert field("Package") == NAME and field("Version") == "2024.1-1" and field("Architecture") == "all"
    assert field("Depends") == f"edge-certd (>= {minimum_edge_certd()})"
    assert sha[:16] in field("Description")

    extract = tmp_path / "extract"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(extract)], check=True)
    assert (extract / pem_path).read_bytes() == root.cert_pem
    for line in (extract / "DEBIAN/md5sums").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        assert hashlib.md5((extract / rel).read_bytes()).hexdigest() == digest
    changelog = gzip.decompress((extract / f"usr/share/doc/{NAME}/changelog.Debian.gz").read_bytes()).decode()
    assert changelog.startswith(f"{NAME} (2024.1-1) ")
    # Data only: edge-certd's dpkg file trigger on roots.d syncs (packaging/debian/edge-certd.triggers).
    assert sorted(p.name for p in (extract / "DEBIAN").iterdir()) == ["control", "md5sums"]


def test_a_refused_file_means_nothing_is_packaged(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Root With Key")
    leaking = tmp_path / "leak.pem"
    leaking.write_bytes(root.cert_pem + root.key_pem)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(root.issue_server("gw.example", ["gw.example"]).cert_pem)
    good = _pem(tmp_path / "good.pem", CA.root("Good Root"))
    out = tmp_path / "out"
    for bad in (leaking, leaf, tmp_path / "missing.pem"):
        r = _package(tree, str(good), str(bad), "--name", NAME, "--version", "1", "--output", str(out))
        assert r.returncode == 2, r.stderr
        # A missing file is said in the one wording every command uses for it.
        assert ("nothing was packaged" in r.stderr or "no such file" in r.stderr) and str(bad) in r.stderr
        assert not out.exists() or not list(out.iterdir())
    assert "private key" in _package(tree, str(leaking), "--name", NAME, "--version", "1").stderr


@pytest.mark.parametrize("name", ["contoso-roots", "a1", "roots+gw.2"])
def test_debian_package_names_are_taken(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["Contoso", "x", "-roots", "roots_gw", "edge-certd", "a b", "ä-roots"])
def test_names_debian_refuses_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_name(name)


@pytest.mark.parametrize("version", ["1", "2.0", "1:2.0-1", "2024.06.1+gw~rc1", "1.0-1.1"])
def test_debian_versions_are_taken(version: str) -> None:
    check_version(version)


@pytest.mark.parametrize("version", ["v1", "", "1.0-", "1=2", "1.0 1", "a:1", "1_0"])
def test_versions_debian_refuses_are_refused(version: str) -> None:
    with pytest.raises(UsageError):
        check_version(version)


def test_du_manifest_has_the_documented_fields_and_an_exact_version(tree: Tree, tmp_path: Path) -> None:
    # No JSON schema for the apt manifest is packaged in Debian or on PyPI, so this checks the
    # documented fields (learn.microsoft.com, "Device Update apt manifest"): name, version,
    # packages[] of {name, version}; a version is exact, [epoch:]upstream[-revision], no '='.
    pem = _pem(tmp_path / "r.pem", CA.root())
    r = _package(
        tree, str(pem), "--name", NAME, "--version", "1:3.0-2", "--output", str(tmp_path), "--du-manifest"
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)  # stdout is the manifest alone
    assert set(manifest) == {"name", "version", "packages"}
    assert isinstance(manifest["name"], str) and manifest["name"]
    assert isinstance(manifest["version"], str) and manifest["version"]
    assert manifest["packages"] == [{"name": NAME, "version": "1:3.0-2"}]
    for package in manifest["packages"]:
        assert set(package) <= {"name", "version"}
        assert "=" not in package["version"] and re.fullmatch(r"(\d+:)?\d[\w.+~-]*", package["version"])
    assert (tmp_path / f"{NAME}_3.0-2_all.deb").exists()  # the epoch is not in the file name


def test_lintian_finds_no_error(tree: Tree, tmp_path: Path) -> None:
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.skip("lintian is not installed")
    pem = _pem(tmp_path / "r.pem", CA.root("Lintian Root"))
    r = _package(tree, str(pem), "--name", NAME, "--version", "1", "--output", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = subprocess.run(
        [lintian, "--pedantic", str(tmp_path / f"{NAME}_1_all.deb")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert not [line for line in out.stdout.splitlines() if line.startswith("E:")], out.stdout


# -- the package's directory as a source ------------------------------------------------------


def _install(roots: Path, name: str, *cas: CA) -> Path:
    """What dpkg leaves: a root-owned 0755 directory of 0644 PEM files."""
    directory = roots / name
    directory.mkdir(mode=0o755, exist_ok=True)
    for ca in cas:
        target = directory / f"{hashlib.sha256(ca.der).hexdigest()[:16]}.pem"
        target.write_bytes(ca.cert_pem)
        target.chmod(0o644)
    return directory


def _trusted(tree: Tree) -> set[str]:
    return {item["sha256"] for item in report.list_cas(tree.load())}


def test_rotation_by_upgrade_trusts_both_then_only_the_new_and_removal_takes_exactly_its_roots(
    tree: Tree, roots: Path
) -> None:
    old, new, shared = CA.root("Old Root"), CA.root("New Root"), CA.root("Also Dropped")
    sha = {ca: hashlib.sha256(ca.der).hexdigest() for ca in (old, new, shared)}
    (tree.drop / "shared.pem").parent.mkdir(parents=True, exist_ok=True)
    (tree.drop / "shared.pem").write_bytes(shared.cert_pem)

    directory = _install(roots, NAME, old, shared)  # version 1
    Engine(tree.load()).sync()
    assert _trusted(tree) == {sha[old], sha[shared]}
    listed = {item["sha256"]: item for item in report.list_cas(tree.load())}
    assert listed[sha[old]]["packages"] == [NAME]
    assert listed[sha[shared]]["packages"] == [NAME]  # and the drop directory

    _install(roots, NAME, new)  # version 2: old and new
    Engine(tree.load()).sync()
    assert _trusted(tree) == {sha[old], sha[new], sha[shared]}

    (directory / f"{sha[old][:16]}.pem").unlink()  # version 3: new only
    Engine(tree.load()).sync()
    assert _trusted(tree) == {sha[new], sha[shared]}
    assert (
        sha[old] not in tree.edge_roots.read_text()
        and old.cert_pem.decode() not in tree.edge_roots.read_text()
    )

    shutil.rmtree(directory)  # removed: the shared root stays, the drop directory provides it
    Engine(tree.load()).sync()
    assert _trusted(tree) == {sha[shared]}
    assert report.list_cas(tree.load())[0]["packages"] == []


def test_status_names_the_package(tree: Tree, roots: Path) -> None:
    _install(roots, NAME, CA.root("Status Root"))
    r = tree.cli("sync")
    assert r.returncode == 0, r.stderr
    assert f"package {NAME}" in tree.cli("status").stdout
    assert f"package {NAME}" in tree.cli("list").stdout
    doc = json.loads(tree.cli("status", "--json").stdout)
    assert doc["trusted"][0]["packages"] == [NAME]


def test_a_package_directory_others_may_write_is_refused_and_what_it_gave_is_held(
    tree: Tree, roots: Path
) -> None:
    ca = CA.root("Held Root")
    directory = _install(roots, NAME, ca)
    Engine(tree.load()).sync()
    assert _trusted(tree) == {hashlib.sha256(ca.der).hexdigest()}
    newcomer = CA.root("Planted Root")
    (directory / "planted.pem").write_bytes(newcomer.cert_pem)
    directory.chmod(0o775)  # group-writable: the edge-certd group may not write a package
    result = Engine(tree.load()).sync()
    assert [p.path for p in result.source_problems] == [str(directory)]
    assert "group-writable" in result.source_problems[0].reason
    assert _trusted(tree) == {hashlib.sha256(ca.der).hexdigest()}  # held, and nothing new
    directory.chmod(0o755)
    roots.chmod(0o777)  # the roots directory itself, too
    result = Engine(tree.load()).sync()
    assert [p.path for p in result.source_problems] == [str(roots)]
    assert _trusted(tree) == {hashlib.sha256(ca.der).hexdigest()}
    roots.chmod(0o755)


def test_symlinked_or_hidden_entries_are_no_package(tree: Tree, roots: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "r.pem").write_bytes(CA.root("Elsewhere").cert_pem)
    (roots / "linked").symlink_to(elsewhere)
    (roots / ".hidden").mkdir()
    (roots / ".hidden" / "r.pem").write_bytes(CA.root("Hidden").cert_pem)
    (roots / "stray.pem").write_bytes(CA.root("Stray").cert_pem)
    result = Engine(tree.load()).sync()
    assert not result.managed and not result.source_problems


def test_package_roots_dir_must_not_overlap_another_source() -> None:
    with pytest.raises(ConfigError, match="must not overlap package_roots_dir"):
        parse_config("drop_dir: /srv/roots/drop\npackage_roots_dir: /srv/roots\n")
    with pytest.raises(ConfigError, match="must not be inside the source directory"):
        parse_config("package_roots_dir: /var/lib/edge-certd\n")  # holds the state
    assert parse_config("package_roots_dir: null\n").package_roots_dir is None
    assert parse_config("").package_roots_dir == "/usr/share/edge-certd/roots.d"


def test_a_new_package_directory_makes_the_watcher_rewatch(tmp_path: Path) -> None:
    woken = []
    watcher = SourceWatcher(lambda: woken.append(1))
    watcher.watch([str(tmp_path)])
    try:
        (tmp_path / NAME).mkdir()
        deadline = time.monotonic() + 120
        seen = (False, False)
        while time.monotonic() < deadline and seen != (True, True):
            time.sleep(0.05)
            got = watcher.take()
            seen = (seen[0] or got[0], seen[1] or got[1])
        assert seen == (True, True)
    finally:
        watcher.stop()
