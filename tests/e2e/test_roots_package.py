"""Fleet rotation through APT, in a booted Debian 12: a roots package from `edge-certd package`,
served by a local apt repository, installed, upgraded (old + new root, then new only), removed
and purged, with trust following each step within seconds.

The repository is flat (`dpkg-scanpackages` on this machine writes its Packages index) and
the container reads it through a `file:` source, exactly as it would read an HTTP mirror.
Two loopback `openssl s_server`s stand in for the gateway before and after the rotation: one
serves a leaf from the old root, one a leaf from the new root.

Like test_container.py it boots its own container (tests/support/nspawn.py) and needs root, debootstrap,
systemd-nspawn and the Debian archive; nothing touches this machine's trust store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.certs import CA
from support.loopback import free_port
from support.nspawn import (
    RELEASES,
    SBIN_PATH,
    Container,
    booted,
    ensure_cached_root,
    missing_for_boot,
    pem_fingerprints,
    unavailable,
    wait_for,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = "contoso-gateway-roots"
WORK = "/srv/e2e"
APT_REPO = "/srv/roots-repo"
EDGE_ROOTS = "/var/lib/edge-certd/bundles/edge-roots.pem"
DROP = "/var/lib/edge-certd/drop"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Only our repository is refreshed after the first update: the archive's lists stay as they are.
UPDATE_OURS = [
    "apt-get", "update", "-q",
    "-o", "Dir::Etc::sourcelist=/etc/apt/sources.list.d/edge-roots.list",
    "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0",
]  # fmt: skip
TRUST_WITHIN = 20.0  # seconds from apt's return to the new trust


def _roots_package(out: Path, version: str, *roots: Path, name: str = NAME) -> Path:
    config = out / "config.yaml"
    config.write_text("{}\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge_certd", "--config", str(config), "package", *map(str, roots),
         "--name", name, "--version", version, "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out / f"{name}_{version}_all.deb"


class Fleet:
    """The container, its two gateways and its apt repository."""

    def __init__(self, box: Container, ports: dict[str, int], sha: dict[str, str]) -> None:
        self.box, self.ports, self.sha = box, ports, sha

    def publish(self, deb: Path) -> None:
        """Add a version to the repository: copy it in, rewrite the index."""
        repo = self.box.path(APT_REPO)
        shutil.copy2(deb, repo / deb.name)
        (repo / deb.name).chmod(0o644)
        index = subprocess.run(
            ["dpkg-scanpackages", "-m", ".", "/dev/null"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (repo / "Packages").write_text(index)

    def apt(self, *args: str) -> float:
        """Run apt-get; return when it returned (monotonic), for timing what follows."""
        self.box.run(["apt-get", "-y", "-q", *args], env=APT_ENV, timeout=300)
        return time.monotonic()

    def trusted(self) -> set[str]:
        path = self.box.path(EDGE_ROOTS)
        return pem_fingerprints(path.read_text()) if path.exists() else set()

    def listed(self) -> set[str]:
        listed = json.loads(self.box.run(["edge-certd", "list", "--json"]).stdout)
        return {item["sha256"] for item in listed["trusted"]}

    def expect(self, names: set[str], since: float, what: str) -> float:
        """Wait until the bundle and `list` show exactly `names`; then check both gateways."""
        want = {self.sha[n] for n in names}
        # The bundles are written before the manifest is saved: wait for both.
        try:
            wait_for(
                lambda: self.trusted() == want and self.listed() == want,
                TRUST_WITHIN,
                f"{what}: edge-roots.pem and edge-certd list hold {sorted(names)}",
            )
        except AssertionError as exc:
            journal = self.box.run(["journalctl", "-u", "edge-certd", "--no-pager", "-n", "40"], check=False)
            tree = self.box.run(["ls", "-laR", "/usr/share/edge-certd", DROP], check=False)
            policy = self.box.run(["apt-cache", "policy", NAME], check=False)
            raise AssertionError(f"{exc}\n{journal.stdout}\n{tree.stdout}\n{policy.stdout}") from None
        took = time.monotonic() - since
        for gateway, port in self.ports.items():
            verified = self.s_client(port)
            assert verified == (gateway in names), f"{what}: s_client to the {gateway} gateway: {verified}"
        print(f"{what}: trust followed in {took:.1f}s")
        return took

    def s_client(self, port: int) -> bool:
        r = self.box.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
             "-verify_hostname", "localhost", "-verify_return_error", "-CAfile", EDGE_ROOTS],
            input="", check=False, timeout=30,
        )  # fmt: skip
        return r.returncode == 0 and "Verify return code: 0 (ok)" in r.stdout


def test_rotation_through_apt_install_upgrade_remove_purge(
    tmp_path: Path, built_deb: Path, cached_root: Callable[..., Path]
) -> None:
    lower = cached_root()
    if shutil.which("dpkg-scanpackages") is None:
        unavailable("dpkg-scanpackages is not installed (dpkg-dev)")
    edge_certd_deb = built_deb  # conftest.py: the same .deb every e2e module installs

    # The gateway rotates from the old root to the new one; a leaf from each stands for it.
    host = tmp_path / "host"
    host.mkdir()
    roots = {
        "old": CA.root("Contoso Gateway Root 2024", key_type="rsa"),
        "new": CA.root("Contoso Gateway Root 2025"),
    }
    sha = {n: hashlib.sha256(ca.der).hexdigest() for n, ca in roots.items()}
    for n, ca in roots.items():
        (host / f"{n}-root.pem").write_bytes(ca.cert_pem)
        leaf = ca.issue_server(f"{n} gateway", ["localhost", "127.0.0.1"])
        (host / f"{n}-leaf.pem").write_bytes(leaf.cert_pem)
        (host / f"{n}.key").write_bytes(leaf.key_pem)
    v1 = _roots_package(host, "1", host / "old-root.pem")
    v2 = _roots_package(host, "2", host / "old-root.pem", host / "new-root.pem")
    v3 = _roots_package(host, "3", host / "new-root.pem")
    extra = _roots_package(host, "1", host / "new-root.pem", name="contoso-extra-roots")
    lintian = shutil.which("lintian")
    if lintian:
        out = subprocess.run([lintian, str(v2)], capture_output=True, text=True, check=False).stdout
        assert not [ln for ln in out.splitlines() if ln.startswith("E:")], out

    def prepare(merged: Path) -> None:
        work = merged / WORK.lstrip("/")
        work.mkdir(parents=True)
        shutil.copy2(edge_certd_deb, work / edge_certd_deb.name)
        for f in host.iterdir():
            shutil.copy2(f, work / f.name)
        (merged / APT_REPO.lstrip("/")).mkdir(parents=True, mode=0o755)
        (merged / APT_REPO.lstrip("/") / "Packages").write_text("")  # nothing published yet
        (merged / "etc/apt/sources.list.d/edge-roots.list").write_text(
            f"deb [trusted=yes] file:{APT_REPO} ./\n"
        )

    ports = {"old": free_port(), "new": free_port()}
    with booted(lower, prepare) as box:
        fleet = Fleet(box, ports, sha)
        started = time.monotonic()
        box.run(["apt-get", "update", "-q"], env=APT_ENV, timeout=600)
        fleet.apt("install", f"{WORK}/{edge_certd_deb.name}")
        wait_for(
            lambda: box.run(["systemctl", "is-active", "edge-certd"], check=False).stdout.strip() == "active",
            60,
            "edge-certd active",
        )
        for n, port in ports.items():
            box.popen(
                ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{port}",
                 "-cert", f"{WORK}/{n}-leaf.pem", "-key", f"{WORK}/{n}.key"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for port in ports.values():
            wait_for(
                lambda p=port: socket.socket().connect_ex(("127.0.0.1", p)) == 0, 20, "s_server listening"
            )
        assert not fleet.s_client(ports["old"]), "nothing is trusted yet: the handshake must fail"

        # Version 1: the old root, from the repository.
        fleet.publish(v1)
        box.run(UPDATE_OURS, env=APT_ENV)
        fleet.expect({"old"}, fleet.apt("install", NAME), "install v1")
        verify = box.run(
            [
                "edge-certd",
                "verify",
                f"127.0.0.1:{ports['old']}",
                "--protocol",
                "https",
                "--servername",
                "localhost",
            ],
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        listed = json.loads(box.run(["edge-certd", "list", "--json"]).stdout)["trusted"]
        assert [item["packages"] for item in listed] == [[NAME]]
        assert f"package {NAME}" in box.run(["edge-certd", "status"]).stdout
        journal = box.run(
            ["journalctl", "-u", "edge-certd", "-o", "json", "--no-pager", "EDGE_CERTD_EVENT=installed"]
        ).stdout
        sources = [
            json.loads(line).get("SOURCE_PATH", "") for line in journal.splitlines() if line.startswith("{")
        ]
        assert any(f"/roots.d/{NAME}/" in s for s in sources), sources

        # Version 2: old and new side by side, the overlap a rotation needs.
        fleet.publish(v2)
        box.run(UPDATE_OURS, env=APT_ENV)
        fleet.expect({"old", "new"}, fleet.apt("install", NAME), "upgrade to v2")

        # Version 3: the new root only.
        fleet.publish(v3)
        box.run(UPDATE_OURS, env=APT_ENV)
        fleet.expect({"new"}, fleet.apt("install", NAME), "upgrade to v3")

        fleet.expect(set(), fleet.apt("remove", NAME), "remove")
        assert not box.path(f"/usr/share/edge-certd/roots.d/{NAME}").exists()

        # A root another source provides stays trusted: a second package also holds the new
        # root; v2 is installed again and purged.
        fleet.publish(extra)
        box.run(UPDATE_OURS, env=APT_ENV)
        fleet.expect({"new"}, fleet.apt("install", "contoso-extra-roots"), "install another package")
        fleet.expect({"old", "new"}, fleet.apt("install", f"{NAME}=2"), "install v2 again")
        fleet.expect({"new"}, fleet.apt("purge", NAME), "purge (the other package's root stays)")
        fleet.expect(set(), fleet.apt("purge", "contoso-extra-roots"), "purge the other package")
        status = box.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", NAME], check=False).stdout.strip()
        assert status in ("", "un"), status
        print(f"the whole rotation took {time.monotonic() - started:.0f}s in the container")


@pytest.mark.parametrize("release", RELEASES)
def test_the_file_trigger_syncs_with_and_without_the_daemon(
    tmp_path: Path, built_deb: Path, release: str
) -> None:
    """Roots packages carry no maintainer scripts: edge-certd's file trigger on roots.d syncs.

    With the daemon running, dpkg asks it (the watcher would follow too); with the daemon and
    its socket stopped, the trigger syncs in dpkg's run, so trust has followed when apt returns.
    """
    reason = missing_for_boot()
    if reason:
        unavailable(reason)
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{SBIN_PATH}:{old_path}"
    try:
        lower = ensure_cached_root(tmp_path / "debootstrap.log", release)
    finally:
        os.environ["PATH"] = old_path
    host = tmp_path / "host"
    host.mkdir()
    roots = {"old": CA.root("Trigger Root 2024", key_type="rsa"), "new": CA.root("Trigger Root 2025")}
    sha = {n: hashlib.sha256(ca.der).hexdigest() for n, ca in roots.items()}
    for n, ca in roots.items():
        (host / f"{n}-root.pem").write_bytes(ca.cert_pem)
    debs = [
        _roots_package(host, "1", host / "old-root.pem"),
        _roots_package(host, "2", host / "old-root.pem", host / "new-root.pem"),
    ]
    for deb in debs:
        members = subprocess.run(
            ["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True
        ).stdout
        assert "postinst" not in members and "postrm" not in members, members

    def prepare(merged: Path) -> None:
        work = merged / WORK.lstrip("/")
        work.mkdir(parents=True)
        for f in (built_deb, *debs):
            shutil.copy2(f, work / f.name)

    with booted(lower, prepare) as box:
        fleet = Fleet(box, {}, sha)
        box.run(["apt-get", "update", "-q"], env=APT_ENV, timeout=600)
        fleet.apt("install", f"{WORK}/{built_deb.name}")
        wait_for(lambda: box.run(["systemctl", "is-active", "edge-certd"], check=False).returncode == 0, 60,
                  "edge-certd active")  # fmt: skip

        def dpkg(*args: str) -> str:
            r = box.run(["dpkg", *args], env=APT_ENV, timeout=300)
            assert "Processing triggers for edge-certd" in r.stdout, r.stdout + r.stderr
            return r.stdout

        def state(package: str) -> str:
            return box.run(
                ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", package], check=False
            ).stdout.strip()

        # The daemon runs: the trigger asks it, and dpkg calls the package installed only after.
        dpkg("-i", f"{WORK}/{debs[0].name}")
        assert state(NAME) == "ii", state(NAME)
        assert fleet.trusted() == {sha["old"]}, "trusted when dpkg returned (the trigger is awaited)"

        # No daemon, no socket (an image build, a stopped service): the trigger syncs itself.
        box.run(["systemctl", "stop", "edge-certd.socket", "edge-certd.service"])
        dpkg("-i", f"{WORK}/{debs[1].name}")
        assert fleet.trusted() == fleet.listed() == {sha["old"], sha["new"]}
        dpkg("--remove", NAME)
        assert fleet.trusted() == fleet.listed() == set()
        for unit in ("edge-certd.service", "edge-certd.socket"):
            active = box.run(["systemctl", "is-active", unit], check=False).stdout.strip()
            assert active == "inactive", f"the trigger started {unit}: {active}"
        # A root the policy refuses (a package built by hand) never fails dpkg; it is reported.
        bad = box.path(f"{WORK}/bad/usr/share/edge-certd/roots.d/contoso-bad-roots")
        bad.mkdir(parents=True)
        (bad / "not-a-root.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        control = box.path(f"{WORK}/bad/DEBIAN")
        control.mkdir()
        (control / "control").write_text(
            "Package: contoso-bad-roots\nVersion: 1\nArchitecture: all\n"
            "Maintainer: e2e <e2e@example.invalid>\nDescription: a refused root\n"
        )
        box.run(["dpkg-deb", "--root-owner-group", "--build", f"{WORK}/bad", f"{WORK}/bad.deb"])
        r = box.run(["dpkg", "-i", f"{WORK}/bad.deb"], env=APT_ENV, check=False)
        assert r.returncode == 0 and state("contoso-bad-roots") == "ii", r.stdout + r.stderr
        assert "exited 3; see: edge-certd status" in r.stderr, r.stdout + r.stderr
