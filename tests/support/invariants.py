"""What must hold for a tree after a crash, a fault or a hostile file.

Two checks:
- `check_mid_crash`: right after a SIGKILL, before anything restarts. Nothing wrong is
  trusted (every `.crt` is a complete CA of the old or the new state) and nothing that
  both states share is missing from any target.
- `check_settled`: after a sync finished. Every target agrees with `ca_dir`, which holds
  exactly the expected CAs, and no temp file is left anywhere edge-certd writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography import x509

from edge_certd.core.judgement import Rules
from edge_certd.core.model import TrustedCA
from edge_certd.core.pem import iter_pem_ders, pem_fingerprints
from edge_certd.core.policy import judge
from edge_certd.store.fsutil import TEMP_PREFIX, TEMP_SUFFIX
from edge_certd.store.state import PENDING_NAME
from edge_certd.targets.envfile import EnvFile
from edge_certd.targets.java import JavaTruststore, jks_truststore
from edge_certd.targets.registry import followers
from support.tree import Tree


def fingerprints(path: Path) -> set[str]:
    return pem_fingerprints(path.read_bytes()) if path.exists() else set()


def written_dirs(tree: Tree) -> list[Path]:
    """Every directory edge-certd writes into."""
    return [tree.ca_dir, tree.bundles, tree.env_file.parent, tree.state]


def temp_leftovers(tree: Tree) -> list[str]:
    found = []
    for directory in written_dirs(tree):
        if directory.is_dir():
            found += [
                str(directory / n.name)
                for n in directory.iterdir()
                if n.name.startswith(TEMP_PREFIX) and n.name.endswith(TEMP_SUFFIX)
            ]
    return found


def installed_cas(tree: Tree) -> dict[str, TrustedCA]:
    """sha256 → CA for every `.crt` in ca_dir; fails on anything that is not one valid root."""
    now = dt.datetime.now(dt.UTC)
    found: dict[str, TrustedCA] = {}
    if not tree.ca_dir.exists():
        return found
    for path in sorted(tree.ca_dir.iterdir()):
        if not path.name.endswith(".crt"):
            continue
        ders = list(iter_pem_ders(path.read_bytes()))
        assert len(ders) == 1, f"{path} holds {len(ders)} certificates (a partial write?)"
        outcome = judge(x509.load_der_x509_certificate(ders[0]), Rules(), now, str(path))
        assert isinstance(outcome, TrustedCA), f"{path} is installed but not a valid CA: {outcome}"
        assert outcome.sha256 not in found, f"{path} duplicates another installed file"
        found[outcome.sha256] = outcome
    return found


def check_mid_crash(tree: Tree, old: set[str], new: set[str], system_roots: set[str]) -> None:
    """Right after a kill: only CAs of the old or new state anywhere, and their common ones
    everywhere."""
    allowed, kept = old | new, old & new
    installed = set(installed_cas(tree))
    assert installed <= allowed, f"ca_dir trusts {installed - allowed}"
    assert kept <= installed, f"ca_dir lost {kept - installed}"
    for target in (tree.system_bundle, tree.bundles / "ca-bundle.pem"):
        if target.exists():
            shas = fingerprints(target)
            assert shas - system_roots <= allowed, f"{target} trusts {shas - system_roots - allowed}"
            assert kept | system_roots <= shas, f"{target} lost {(kept | system_roots) - shas}"
    if tree.edge_roots.exists():
        shas = fingerprints(tree.edge_roots)
        assert kept <= shas <= allowed, f"{tree.edge_roots} holds {shas}"


def check_settled(tree: Tree, expected: set[str], system_roots: set[str]) -> None:
    """After a completed sync: every target agrees with ca_dir, which holds `expected`."""
    assert temp_leftovers(tree) == [], f"temp files left behind: {temp_leftovers(tree)}"
    cas = installed_cas(tree)
    assert set(cas) == expected, f"ca_dir holds {set(cas)}, expected {expected}"
    manifest = json.loads((tree.state / "manifest.json").read_bytes())
    by_sha = {item["sha256"]: item for item in manifest["cas"]}
    assert set(by_sha) == expected, "manifest and ca_dir disagree"
    for sha, item in by_sha.items():
        assert Path(item["path"]).exists() and item["sources"], item
        assert hashlib.sha256(next(iter_pem_ders(Path(item["path"]).read_bytes()))).hexdigest() == sha
    assert fingerprints(tree.edge_roots) == expected, "edge-roots.pem and ca_dir disagree"
    assert fingerprints(tree.system_bundle) == expected | system_roots, (
        "the system bundle is not exactly the managed set plus the system's own roots"
    )
    assert (tree.bundles / "ca-bundle.pem").read_bytes() == tree.system_bundle.read_bytes()
    targets = {target.name: target for target in followers(tree.load())}
    env, java = targets["env"], targets["java"]
    assert isinstance(env, EnvFile) and isinstance(java, JavaTruststore)
    assert tree.env_file.read_text() == env.text()
    if java.path is not None:
        managed = [cas[sha] for sha in sorted(cas)]
        want = jks_truststore(java._entries(managed), java.password)
        assert Path(java.path).read_bytes() == want, "Java truststore and ca_dir disagree"
    assert not (tree.state / PENDING_NAME).exists(), "update-pending left after a good sync"
