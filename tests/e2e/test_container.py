"""The .deb in a real booted Debian 12 and 13: install, scp a CA in, TLS handshakes, reload, purge.

One scenario in ordered steps sharing one container per release (the `scenario` fixture is
parametrized by release, so pytest runs every step on bookworm, then every step on trixie, with
one booted container at a time); the same .deb, built once, is installed on both. Once a step
fails, the later ones of that release skip (see `step`) instead of failing with confusing
follow-on errors. The container is a
systemd-nspawn boot of an overlay on a cached debootstrap root (tests/support/nspawn.py), so nothing of
this machine's own trust store is ever touched: every command that changes trust runs inside
the container through nsenter.

Needs root, debootstrap, systemd-nspawn and network access to the Debian archive. Outside CI a
missing piece skips with the reason; with CI=true it fails, so CI can never pass without it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.certs import CA, Issued
from support.loopback import free_port
from support.nspawn import RELEASES, Container, booted, pem_fingerprints, unavailable, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

DROP = "/var/lib/edge-certd/drop"
CA_DIR = "/usr/local/share/ca-certificates/edge-certd"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ENV_FILE = "/etc/edge-certd/ca.env"
PROM_FILE = "/var/lib/prometheus/node-exporter/edge-certd.prom"
WORK = "/srv/e2e"  # inside the container; its /tmp is a fresh tmpfs after boot
# Much shorter than the unit's 60s, so a daemon that stopped pinging is killed (and counted in
# NRestarts) well within this test's run time.
TEST_WATCHDOG_SEC = 10

NODE_HANDSHAKE = """
const tls = require('tls');
const opts = {host: '127.0.0.1', port: Number(process.argv[1]), servername: 'localhost'};
const s = tls.connect(opts, () => {
  console.log('handshake ok, authorized=' + s.authorized); s.end(); process.exit(0);
});
s.on('error', (e) => {
  console.log('handshake failed: ' + (e.code || e.message)); process.exit(1);
});
"""


def _colon_hex(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@dataclass(frozen=True)
class Autopkgtest:
    name: str
    depends: tuple[str, ...]
    restrictions: frozenset[str]


def autopkgtests(control: str) -> list[Autopkgtest]:
    """The tests a debian/tests/control lists (DEP-8), one per name in each Tests: field."""
    lines = [ln for ln in control.splitlines() if not ln.startswith("#")]
    found = []
    for para in re.split(r"\n\s*\n", "\n".join(lines)):
        fields: dict[str, str] = {}
        for m in re.finditer(r"^([\w-]+):(.*(?:\n[ \t].*)*)", para, re.M):
            fields[m.group(1).lower()] = " ".join(m.group(2).split())
        if not fields:
            continue
        # Test-Command: would be run by autopkgtest too; this runner only knows Tests:.
        assert "tests" in fields, f"a paragraph without Tests: in debian/tests/control: {para!r}"
        depends = tuple(d.strip() for d in fields.get("depends", "@").split(",") if d.strip())
        restrictions = frozenset(fields.get("restrictions", "").replace(",", " ").split())
        names = fields["tests"].replace(",", " ").split()
        found += [Autopkgtest(name, depends, restrictions) for name in names]
    return found


@dataclass(repr=False)  # its default repr would flood every assertion message
class Scenario:
    """What the steps share."""

    box: Container
    ssh_port: int
    tls_port: int
    root: CA
    server: Issued
    root_sha256: str
    release: str
    baseline: set[str] = field(default_factory=set)
    main_pid: str = ""
    consumer_invocation: str = ""
    started: float = 0.0
    metrics_port: int = 0
    failed_step: str = ""

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.box.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]

    def show(self, unit: str, prop: str) -> str:
        return self.box.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    def bundle(self) -> set[str]:
        return pem_fingerprints(self.box.path(SYSTEM_BUNDLE).read_text())

    def journal(self, event: str) -> list[dict[str, str]]:
        r = self.box.run(["journalctl", "-u", "edge-certd", "-o", "json", "--no-pager",
                          f"EDGE_CERTD_EVENT={event}"], check=False)  # fmt: skip
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    def scp_root_ca(self) -> None:
        """As a technician would: scp through sshd, logged in as `tech` (group edge-certd)."""
        self.sh(
            f"scp -i {WORK}/id_ed25519 -P {self.ssh_port} -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
            f"{WORK}/gateway-root.pem tech@127.0.0.1:{DROP}/gateway-root.pem"
        )

    def s_client(self) -> str:
        r = self.box.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.tls_port}",
             "-servername", "localhost", "-verify_hostname", "localhost"],
            input="", check=False, timeout=30,
        )  # fmt: skip
        return r.stdout + r.stderr

    def node(self, extra_ca: str | None) -> subprocess.CompletedProcess[str]:
        # --use-bundled-ca: Node's own Mozilla list instead of the system store Debian's node
        # reads, so only NODE_EXTRA_CA_CERTS (from the env file) can make the handshake pass.
        env = {"NODE_EXTRA_CA_CERTS": extra_ca} if extra_ca else None
        return self.box.run(
            ["node", "--use-bundled-ca", "-e", NODE_HANDSHAKE, str(self.tls_port)],
            env=env, check=False, timeout=60,
        )  # fmt: skip

    def java_has_root(self) -> bool:
        r = self.box.run(["keytool", "-list", "-cacerts", "-storepass", "changeit"], check=False)
        return _colon_hex(self.root_sha256) in r.stdout


def step(fn: Callable[[Scenario], None]) -> Callable[[Scenario], None]:
    """An ordered step: skipped once an earlier step of the scenario has failed."""

    @functools.wraps(fn)
    def run_step(scenario: Scenario) -> None:
        if scenario.failed_step:
            pytest.skip(f"an earlier step failed: {scenario.failed_step}")
        try:
            fn(scenario)
        except pytest.skip.Exception:
            raise
        except BaseException:
            scenario.failed_step = fn.__name__
            raise

    return run_step


def test_lintian_reports_no_errors_or_warnings(built_deb: Path) -> None:
    # Debian 12's lintian; tests/e2e/test_debian13_world.py runs Debian 13's on the same file.
    # There are no overrides: the one I: tag left, package-supports-alternative-init-but-no-
    # init.d-script, is true (a Type=notify daemon sandboxed by its unit has no init.d script)
    # and an override of it would be an alien-tag error for Debian 13's lintian, which lacks it.
    lintian = shutil.which("lintian")
    if lintian is None:
        unavailable("lintian is not installed")
    r = subprocess.run(
        [lintian, "--fail-on", "error,warning", "--pedantic", "--display-info", str(built_deb)],
        capture_output=True,
        text=True,
    )
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


def test_unit_exposure_is_at_most_2_5() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed")
    unit = REPO / "systemd" / "edge-certd.service"
    r = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for edge-certd.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout


def _before_boot(ssh_port: int, deb: Path, host_work: Path) -> Callable[[Path], None]:
    def prepare(merged: Path) -> None:
        etc = merged / "etc"
        # sshd (enabled in the cached root) comes up on loopback and our port only, never on
        # the host's port 22.
        (etc / "ssh/sshd_config.d/e2e.conf").write_text(
            f"Port {ssh_port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n"
        )
        dropin = etc / "systemd/system/edge-certd.service.d"
        dropin.mkdir(parents=True)
        (dropin / "e2e-watchdog.conf").write_text(f"[Service]\nWatchdogSec={TEST_WATCHDOG_SEC}s\n")
        # A service that uses the env file, for on_change.restart_units to restart.
        (etc / "systemd/system/e2e-consumer.service").write_text(
            "[Unit]\nDescription=stands in for an IoT Edge client\n"
            f"[Service]\nEnvironmentFile=-{ENV_FILE}\nExecStart=/bin/sleep infinity\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        wants = etc / "systemd/system/multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "e2e-consumer.service").symlink_to("/etc/systemd/system/e2e-consumer.service")
        work = merged / WORK.lstrip("/")
        work.mkdir(parents=True)
        shutil.copy2(deb, work / deb.name)
        # The package's autopkgtests, where autopkgtest would find them: debian/tests/.
        shutil.copytree(REPO / "packaging/debian/tests", work / "debian/tests")
        for f in host_work.iterdir():
            shutil.copy2(f, work / f.name)

    return prepare


@pytest.fixture(scope="module", params=RELEASES)
def scenario(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    built_deb: Path,
    cached_root: Callable[..., Path],
) -> Iterator[Scenario]:
    release: str = request.param
    lower = cached_root(release)

    # Root -> intermediate -> server for localhost: only the root is ever dropped, so the
    # handshakes pass only if trust really leads from the served chain to the dropped root.
    root = CA.root("edge-certd e2e Gateway Root", key_type="rsa")
    server = root.intermediate("edge-certd e2e Edge CA").issue_server("gateway", ["localhost", "127.0.0.1"])
    host_work = tmp_path_factory.mktemp("work")
    (host_work / "gateway-root.pem").write_bytes(root.cert_pem)
    (host_work / "server-leaf.pem").write_bytes(server.cert_pem)
    (host_work / "server-chain.pem").write_bytes(server.chain_pem()[len(server.cert_pem) :])
    (host_work / "server.key").write_bytes(server.key_pem)

    # The container shares the host's network namespace (apt inside must reach the archive),
    # so its servers take free ports from the host's space, on loopback.
    ssh_port, tls_port = free_port(), free_port()
    with booted(lower, _before_boot(ssh_port, built_deb, host_work)) as box:
        sc = Scenario(box, ssh_port, tls_port, root, server, hashlib.sha256(root.der).hexdigest(), release)
        sc.baseline = sc.bundle()
        sc.sh(
            f"useradd --create-home --shell /bin/sh tech && "
            f"chmod 0600 {WORK}/gateway-root.pem {WORK}/server.key && "
            f"ssh-keygen -q -t ed25519 -N '' -f {WORK}/id_ed25519 && "
            "install -d -m 0700 -o tech -g tech /home/tech/.ssh && "
            f"install -m 0600 -o tech -g tech {WORK}/id_ed25519.pub /home/tech/.ssh/authorized_keys"
        )
        box.popen(
            ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{tls_port}",
             "-cert", f"{WORK}/server-leaf.pem", "-key", f"{WORK}/server.key",
             "-cert_chain", f"{WORK}/server-chain.pem"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", tls_port)) == 0

        wait_for(listening, 20, "openssl s_server listening")
        yield sc


@step
def test_install_pulls_dependencies_and_starts_the_service(scenario: Scenario) -> None:
    sc = scenario
    assert sc.box.run(["dpkg", "-s", "python3-pydantic"], check=False).returncode != 0, (
        "the cached root must not hold edge-certd's dependencies; apt has to pull them"
    )
    # The CA is not trusted yet: the failing case the later steps turn into a passing one.
    assert "Verify return code: 0 (ok)" not in sc.s_client()

    env = {"DEBIAN_FRONTEND": "noninteractive"}
    sc.box.run(["apt-get", "update", "-q"], env=env)
    deb = next(sc.box.path(WORK).glob("edge-certd_*_all.deb")).name
    out = sc.sh(f"cd {WORK} && apt-get install -y -q ./{deb}", env=env).stdout
    assert re.search(rf"Get:\d+ \S+ {sc.release}/main \S+ python3-pydantic ", out), out[-3000:]
    sc.started = time.monotonic()

    wait_for(lambda: sc.show("edge-certd", "ActiveState") == "active", 60, "edge-certd active")
    assert sc.box.run(["systemctl", "is-active", "edge-certd"]).stdout.strip() == "active"
    status = sc.box.run(["systemctl", "status", "--no-pager", "edge-certd"], check=False).stdout
    assert re.search(r'^\s+Status: ".+"', status, re.M), status
    assert sc.show("edge-certd", "WatchdogUSec") == f"{TEST_WATCHDOG_SEC}s"
    sc.main_pid = sc.show("edge-certd", "MainPID")

    assert sc.box.run(["getent", "group", "edge-certd"], check=False).returncode == 0
    # What an admin does once per technician; the group is the package's (sysusers.d).
    sc.box.run(["usermod", "--append", "--groups", "edge-certd", "tech"])
    mode = sc.box.run(["stat", "-c", "%a %U %G", DROP]).stdout.split()
    assert mode == ["2770", "root", "edge-certd"]
    conffiles = sc.box.run(["dpkg-query", "-W", "-f=${Conffiles}", "edge-certd"]).stdout
    assert "/etc/edge-certd/config.yaml" in conffiles


@step
def test_installed_unit_exposure_is_at_most_2_5_by_the_releases_systemd(scenario: Scenario) -> None:
    # The host's check above is Debian 12's systemd-analyze; a newer systemd (257 in Debian 13)
    # weighs more settings, so each release scores the unit as the package installed it.
    sc = scenario
    unit = sc.show("edge-certd", "FragmentPath")
    r = sc.box.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit], check=False)
    m = re.search(r"Overall exposure level for edge-certd.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"{sc.release}: exposure {m.group(1)}")
    assert float(m.group(1)) <= 2.5, r.stdout


def _run_autopkgtests(sc: Scenario, breaking: bool) -> None:
    """What `autopkgtest` would do with debian/tests/control, without the tool: install each
    test's Depends (@ is edge-certd, installed already), give it a fresh $AUTOPKGTEST_TMP, run
    it as root only under needs-root, and fail on stderr output unless allow-stderr. The tests
    that break the testbed (`breaking`) run apart, on a fresh install, after every other step."""
    tests = autopkgtests(sc.box.path(f"{WORK}/debian/tests/control").read_text())
    assert [t.name for t in tests] == ["smoke", "service"], tests
    for t in tests:
        if ("breaks-testbed" in t.restrictions) != breaking:
            continue
        extra = [d for d in t.depends if d != "@"]
        if extra:
            sc.box.run(["apt-get", "install", "-y", "-q", *extra], env={"DEBIAN_FRONTEND": "noninteractive"})
        user = None if "needs-root" in t.restrictions else "tech"
        tmp = sc.box.run(["mktemp", "-d", "-p", "/var/tmp", "autopkgtest.XXXXXX"]).stdout.strip()
        if user:
            sc.box.run(["chown", user, tmp])
        script = f"{WORK}/debian/tests/{t.name}"
        r = sc.box.run([script], user=user, env={"AUTOPKGTEST_TMP": tmp}, check=False, timeout=300)
        print(f"--- autopkgtest {t.name} ({user or 'root'}):\n{r.stdout}")
        assert r.returncode == 0, f"autopkgtest {t.name} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
        if "allow-stderr" not in t.restrictions:
            assert r.stderr == "", f"autopkgtest {t.name} wrote to stderr:\n{r.stderr}"
        sc.box.run(["rm", "-rf", tmp])


@step
def test_autopkgtests_pass_against_the_installed_package(scenario: Scenario) -> None:
    _run_autopkgtests(scenario, breaking=False)


@step
def test_reload_rereads_the_config_and_keeps_the_process(scenario: Scenario) -> None:
    sc = scenario
    sc.box.path("/etc/edge-certd/config.yaml").write_text(
        "# e2e: restart the stand-in client whenever trust changes\n"
        "on_change:\n  restart_units:\n    - e2e-consumer.service\n"
    )
    sc.consumer_invocation = sc.show("e2e-consumer.service", "InvocationID")
    assert sc.consumer_invocation
    sc.box.run(["systemctl", "reload", "edge-certd"])
    # systemd 252 ends the reload job when ExecReload's kill returns; the daemon's own
    # RELOADING=1 may arrive after that, so the unit can read "reloading" until its READY=1.
    deadline = time.monotonic() + 60
    while (
        state := sc.box.run(["systemctl", "is-active", "edge-certd"], check=False).stdout.strip()
    ) == "reloading" and time.monotonic() < deadline:
        time.sleep(0.2)
    log = sc.box.run(
        ["journalctl", "-u", "edge-certd", "-o", "short-precise", "-n", "40", "--no-pager"], check=False
    ).stdout
    assert state == "active", f"{state}\n{log}"
    assert sc.show("edge-certd", "MainPID") == sc.main_pid, "reload must not restart the daemon"


@step
def test_scp_into_drop_dir_makes_every_client_trust_the_gateway(scenario: Scenario) -> None:
    sc = scenario
    sc.scp_root_ca()
    assert sc.box.run(["stat", "-c", "%U %G", f"{DROP}/gateway-root.pem"]).stdout.split() == [
        "tech", "edge-certd"
    ]  # fmt: skip

    def installed_event() -> bool:
        return any(
            e.get("CERT_SHA256", "").replace(":", "").lower() == sc.root_sha256
            for e in sc.journal("installed")
        )

    took = wait_for(installed_event, 20, "journal shows EDGE_CERTD_EVENT=installed for the CA")
    print(f"installed event {took:.1f}s after scp")
    # The package's journal catalog is live: systemd's dpkg trigger compiled it at install.
    explained = sc.box.run(["journalctl", "-x", "-u", "edge-certd", "--no-pager",
                            "EDGE_CERTD_EVENT=installed"]).stdout  # fmt: skip
    subject = sc.journal("installed")[-1]["CERT_SUBJECT"]
    assert f"Subject: edge-certd now trusts the root CA {subject}" in explained, explained[-2000:]
    assert f"found in {DROP}/gateway-root.pem" in explained, explained[-2000:]
    assert "@" not in explained.split("Subject:", 1)[1], f"a field left unfilled:\n{explained[-2000:]}"
    assert "Documentation: man:edge-certd(8)" in explained, explained[-2000:]
    wait_for(lambda: sc.root_sha256 in sc.bundle(), 10, f"the CA in {SYSTEM_BUNDLE}")

    out = sc.s_client()
    assert "Verify return code: 0 (ok)" in out, out[-2000:]

    env_file = sc.box.path(ENV_FILE).read_text()
    env = dict(
        (k, v.strip("'"))
        for k, _, v in (ln.partition("=") for ln in env_file.splitlines())
        if k and not k.startswith("#")
    )
    assert "NODE_EXTRA_CA_CERTS" in env, env_file
    # systemd's EnvironmentFile= reads each (single-quoted) value exactly as sh does.
    for key in ("NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"):
        by_systemd = sc.box.run(
            [
                "systemd-run",
                "--quiet",
                "--pipe",
                "--wait",
                "-p",
                f"EnvironmentFile={ENV_FILE}",
                "/usr/bin/printenv",
                key,
            ]
        ).stdout
        by_sh = sc.box.run(["sh", "-c", f"set -a; . {ENV_FILE}; printenv {key}"]).stdout
        assert by_systemd == by_sh == env[key] + "\n", (key, by_systemd, by_sh)
    without = sc.node(None)
    assert without.returncode != 0, f"must fail without the env file: {without.stdout}"
    node = sc.node(env["NODE_EXTRA_CA_CERTS"])
    assert node.returncode == 0 and "handshake ok" in node.stdout, node.stdout + node.stderr

    # ca-certificates-java's hook ran inside the unit's sandbox: dpkg triggers, a JVM, writes
    # to /etc/ssl/certs/java and /var/lib/ca-certificates-java.
    assert sc.java_has_root(), "the CA is missing from the Java system keystore"

    wait_for(
        lambda: sc.show("e2e-consumer.service", "InvocationID") != sc.consumer_invocation,
        20,
        "systemctl try-restart of on_change.restart_units from inside the sandbox",
    )
    assert sc.show("e2e-consumer.service", "ActiveState") == "active"


@step
def test_deleting_the_file_removes_the_ca_from_the_system_bundle(scenario: Scenario) -> None:
    sc = scenario
    sc.sh(
        f"ssh -i {WORK}/id_ed25519 -p {sc.ssh_port} -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR tech@127.0.0.1 "
        f"rm {DROP}/gateway-root.pem"
    )
    wait_for(lambda: sc.root_sha256 not in sc.bundle(), 30, f"the CA gone from {SYSTEM_BUNDLE}")
    assert sc.bundle() == sc.baseline
    assert "Verify return code: 0 (ok)" not in sc.s_client()
    # update-ca-certificates never tells its hooks about a deleted local CA; edge-certd runs
    # ca-certificates-java's "fresh" trigger itself, from inside the sandbox.
    wait_for(lambda: not sc.java_has_root(), 60, "the CA gone from the Java system keystore")


@step
def test_file_leaking_a_private_key_is_refused_and_tightened(scenario: Scenario) -> None:
    sc = scenario
    # A technician's own file (owner tech, mode 0644): tightening it needs CAP_FOWNER.
    sc.sh(f"cat {WORK}/gateway-root.pem {WORK}/server.key > {WORK}/leaky.pem && chmod 0644 {WORK}/leaky.pem")
    sc.sh(
        f"scp -p -i {WORK}/id_ed25519 -P {sc.ssh_port} -o BatchMode=yes "
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
        f"{WORK}/leaky.pem tech@127.0.0.1:{DROP}/leaky.pem"
    )
    wait_for(lambda: bool(sc.journal("private_key")), 20, "journal shows the private_key event")
    mode = sc.box.run(["stat", "-c", "%a %U", f"{DROP}/leaky.pem"]).stdout.split()
    assert mode == ["600", "tech"], mode
    assert sc.root_sha256 not in sc.bundle()
    key_body = sc.box.path(f"{WORK}/server.key").read_text().splitlines()[1]
    logs = sc.box.run(["journalctl", "-u", "edge-certd", "--no-pager", "-o", "verbose"]).stdout
    assert key_body not in logs
    sc.sh(f"rm {DROP}/leaky.pem")


@step
def test_a_technician_adds_without_sudo_and_the_daemon_does_and_logs_it(scenario: Scenario) -> None:
    sc = scenario
    sc.sh(f"install -m 0644 -o tech -g tech {WORK}/gateway-root.pem /home/tech/gateway-root.pem")
    ssh = (
        f"ssh -i {WORK}/id_ed25519 -p {sc.ssh_port} -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR tech@127.0.0.1 "
    )
    before = len(sc.journal("installed"))
    added = sc.box.run(["sh", "-c", ssh + "edge-certd add /home/tech/gateway-root.pem"], check=False)
    assert added.returncode == 0, added.stdout + added.stderr
    # The daemon did it: STATUS= says so the moment the command returns, and the journal
    # line is under the unit, with no wait.
    status = sc.show("edge-certd", "StatusText")
    assert status.startswith("1 CA trusted"), status
    assert len(sc.journal("installed")) == before + 1
    assert sc.root_sha256 in sc.bundle()
    # remove needs root; the technician gets a hint, not a traceback.
    short = sc.root_sha256[:16]
    refused = sc.box.run(["sh", "-c", ssh + f"edge-certd remove {short}"], check=False)
    assert refused.returncode == 2 and "needs root" in refused.stderr, refused.stdout + refused.stderr
    removed = sc.box.run(["edge-certd", "remove", short], check=False)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert sc.show("edge-certd", "StatusText").startswith("0 CAs trusted"), sc.show(
        "edge-certd", "StatusText"
    )
    assert sc.root_sha256 not in sc.bundle()
    # The technician drops it again: it stays removed, and the journal and status say so once.
    # (under a new name: the copy `add` made is root's, and scp may not overwrite it)
    sc.sh(
        f"scp -i {WORK}/id_ed25519 -P {sc.ssh_port} -o BatchMode=yes -o StrictHostKeyChecking=no "
        f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {WORK}/gateway-root.pem "
        f"tech@127.0.0.1:{DROP}/gateway-root-again.pem"
    )
    wait_for(lambda: any("stays removed" in e.get("MESSAGE", "") for e in sc.journal("rejected")), 20,
              "the journal saying the CA stays removed")  # fmt: skip
    assert sc.root_sha256 not in sc.bundle()
    shown = sc.box.run(["sh", "-c", ssh + "edge-certd status"], check=False)
    assert "stays removed" in shown.stdout, shown.stdout + shown.stderr
    # Back as it was for the steps after this one: trusted again by add, then the file goes.
    assert sc.box.run(["edge-certd", "add", "/home/tech/gateway-root.pem"]).returncode == 0
    sc.sh(f"rm -f {DROP}/gateway-root.pem {DROP}/gateway-root-again.pem")
    wait_for(lambda: sc.root_sha256 not in sc.bundle(), 30, "the CA gone once its files are")


@step
def test_watchdog_never_killed_the_daemon(scenario: Scenario) -> None:
    sc = scenario
    # Outlive two watchdog periods so that a daemon that never pings would have been killed.
    remaining = 2.5 * TEST_WATCHDOG_SEC - (time.monotonic() - sc.started)
    if remaining > 0:
        time.sleep(remaining)
    assert sc.show("edge-certd", "NRestarts") == "0"
    assert sc.show("edge-certd", "MainPID") == sc.main_pid
    assert sc.box.run(["systemctl", "is-active", "edge-certd"]).stdout.strip() == "active"
    assert sc.show("edge-certd", "Result") == "success"


@step
def test_stop_during_an_update_lets_the_update_finish(scenario: Scenario) -> None:
    sc = scenario
    # A slow update-ca-certificates hook, run last (run-parts order), like a JVM rewriting
    # its keystore. Its markers live where the unit's sandbox lets hooks write.
    marks = "/var/lib/edge-certd/e2e-slow-hook"
    hook = "/etc/ca-certificates/update.d/zz-e2e-slow"
    sc.box.path(hook).write_text(
        f"#!/bin/sh\nmkdir -p {marks}\ntouch {marks}/started\nsleep 5\ntouch {marks}/finished\n"
    )
    sc.sh(f"chmod 0755 {hook} && rm -rf {marks}")
    try:
        sc.scp_root_ca()
        wait_for(lambda: sc.box.path(f"{marks}/started").exists(), 30, "the slow hook to start")
        assert not sc.box.path(f"{marks}/finished").exists(), "the hook ended before the stop"
        sc.box.run(["systemctl", "stop", "edge-certd"])
        # KillMode=mixed: SIGTERM reached the daemon only; the update it was running ended
        # normally, and the daemon exited cleanly after it.
        assert sc.box.path(f"{marks}/finished").exists(), "stop killed the running update"
        assert sc.show("edge-certd", "Result") == "success"
        assert sc.root_sha256 in sc.bundle()
    finally:
        sc.sh(f"rm -rf {hook} {marks}")
        sc.box.run(["systemctl", "start", "edge-certd"])
    wait_for(lambda: sc.show("edge-certd", "ActiveState") == "active", 60, "edge-certd again")


Scrape = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(sc: Scenario) -> Scrape:
    """edge-certd's samples as node_exporter serves them: curl of /metrics inside the box."""
    from prometheus_client.parser import text_string_to_metric_families

    text = sc.box.run(["curl", "-fsS", f"http://127.0.0.1:{sc.metrics_port}/metrics"]).stdout
    found: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("edge_certd_"):
                found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _listed(sc: Scenario) -> list[dict[str, str]]:
    doc = json.loads(sc.box.run(["edge-certd", "list", "--json"]).stdout)
    assert doc["schema_version"] == 1, doc
    return list(doc["trusted"])


def _scrape_agreeing(sc: Scenario, *, cas: int) -> Scrape | None:
    """A scrape showing exactly what `edge-certd list --json` shows, when list shows `cas`
    CAs; None otherwise. Whoever waits keeps this very scrape: list reads the manifest,
    which a sync writes before the metrics, so a second scrape or a second list may catch
    the other side of that gap."""
    scraped = _scrape(sc)
    listed = _listed(sc)
    series = {
        labels["sha256"]: value
        for labels, value in scraped.get("edge_certd_ca_not_after_timestamp_seconds", [])
    }
    wanted = {
        ca["sha256"]: dt.datetime.fromisoformat(ca["not_after"].replace("Z", "+00:00")).timestamp()
        for ca in listed
    }
    agrees = scraped.get("edge_certd_trusted_cas") == [({}, float(cas))] and series == wanted
    return scraped if agrees and len(listed) == cas else None


def _wait_for_scrape(sc: Scenario, *, cas: int, what: str) -> Scrape:
    found: list[Scrape] = []

    def check() -> bool:
        scraped = _scrape_agreeing(sc, cas=cas)
        if scraped is not None:
            found.append(scraped)
        return bool(found)

    wait_for(check, 30, what)
    return found[0]


def _metrics_story(sc: Scenario) -> str:
    """What a failed metrics check needs to be understood: the file and the journal's tail."""
    prom = sc.box.run(["cat", PROM_FILE], check=False).stdout
    journal = sc.box.run(
        ["journalctl", "-u", "edge-certd", "-n", "60", "--no-pager", "-o", "short-precise"], check=False
    )
    return f"{PROM_FILE}:\n{prom}\njournal:\n{journal.stdout}"


def _promtool_accepts(sc: Scenario) -> None:
    r = sc.sh(f"promtool check metrics < {PROM_FILE}", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@step
def test_node_exporter_serves_metrics_that_agree_with_list(scenario: Scenario) -> None:
    sc = scenario
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    # node_exporter on a free loopback port (the box shares the host's network), with the
    # textfile directory Debian's package uses; promtool comes from `prometheus`, whose own
    # server is masked so it never starts.
    sc.metrics_port = free_port()
    sc.box.path("/etc/default/prometheus-node-exporter").write_text(
        f'ARGS="--web.listen-address=127.0.0.1:{sc.metrics_port} '
        '--collector.textfile.directory=/var/lib/prometheus/node-exporter"\n'
    )
    sc.box.run(["systemctl", "mask", "prometheus.service"])
    sc.box.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold",
         "prometheus-node-exporter", "prometheus", "curl"],
        env=env, timeout=600,
    )  # fmt: skip
    assert sc.box.path("/var/lib/prometheus/node-exporter").is_dir()
    wait_for(
        lambda: sc.show("prometheus-node-exporter", "ActiveState") == "active", 60, "node_exporter active"
    )
    # The unit's sandbox fixed its writable paths when it started; the directory is new.
    sc.box.run(["systemctl", "restart", "edge-certd"])
    wait_for(lambda: sc.box.path(PROM_FILE).exists(), 60, f"{PROM_FILE} written")

    # After a drop (the CA came back in the step before): one CA, its notAfter, no problem.
    scraped = _wait_for_scrape(sc, cas=1, what="metrics showing one CA, as `edge-certd list --json` does")
    ((labels, _),) = scraped["edge_certd_ca_not_after_timestamp_seconds"]
    assert labels["sha256"] == sc.root_sha256, labels
    assert scraped["edge_certd_degraded"] == [({}, 0.0)]
    assert scraped["edge_certd_last_sync_success"] == [({}, 1.0)]
    assert scraped["edge_certd_update_runs_total"][0][1] >= 1
    assert "edge_certd_last_expiry_check_timestamp_seconds" in scraped
    version = sc.box.run(["dpkg-query", "-W", "-f=${Version}", "edge-certd"]).stdout
    assert scraped["edge_certd_info"][0][0]["version"] == version.split("-")[0]
    _promtool_accepts(sc)

    # After a removal: the technician deletes the file; the metrics follow.
    runs = scraped["edge_certd_update_runs_total"][0][1]
    sc.sh(f"rm {DROP}/gateway-root.pem")
    wait_for(lambda: sc.root_sha256 not in sc.bundle(), 30, f"the CA gone from {SYSTEM_BUNDLE}")
    scraped = _wait_for_scrape(sc, cas=0, what="metrics showing no CA, as list does")
    assert "edge_certd_ca_not_after_timestamp_seconds" not in scraped, _metrics_story(sc)
    assert scraped["edge_certd_update_runs_total"][0][1] > runs
    _promtool_accepts(sc)
    # The JSON a fleet tool reads validates against the schema the package installed.
    schemas = sc.box.run(["ls", "/usr/share/edge-certd/schemas"]).stdout.split()
    assert sorted(schemas) == [
        "doctor.schema.json",
        "list.schema.json",
        "status.schema.json",
        "verify.schema.json",
    ]


@step
def test_remove_keeps_trust_and_purge_takes_only_edge_certds_away(scenario: Scenario) -> None:
    sc = scenario
    sc.scp_root_ca()
    wait_for(lambda: sc.root_sha256 in sc.bundle(), 30, "the CA trusted again")
    wait_for(sc.java_has_root, 10, "the CA in the Java system keystore again")
    env = {"DEBIAN_FRONTEND": "noninteractive"}

    sc.box.run(["apt-get", "remove", "-y", "-q", "edge-certd"], env=env)
    assert sc.show("edge-certd", "ActiveState") != "active"
    assert sc.root_sha256 in sc.bundle(), "apt remove must leave the CA trusted"
    assert "Verify return code: 0 (ok)" in sc.s_client()
    assert sc.box.path(ENV_FILE).exists()
    assert not sc.box.path(PROM_FILE).exists(), "apt remove must take edge-certd's metrics away"

    sc.box.run(["apt-get", "purge", "-y", "-q", "edge-certd"], env=env)
    assert sc.bundle() == sc.baseline, "purge must remove edge-certd's CAs and only those"
    assert not sc.java_has_root(), "purge must remove the CA from the Java system keystore"
    assert "Verify return code: 0 (ok)" not in sc.s_client()
    links = sc.box.run(["find", "/etc/ssl/certs", "-lname", "*edge-certd*"]).stdout
    assert links == "", f"links into edge-certd's CA directory remain:\n{links}"
    for gone in (CA_DIR, "/var/lib/edge-certd", "/etc/edge-certd"):
        assert not sc.box.path(gone).exists(), f"{gone} is left after purge"
    assert sc.box.run(["dpkg", "-s", "edge-certd"], check=False).returncode != 0


def _install_again(sc: Scenario) -> None:
    deb = next(sc.box.path(WORK).glob("edge-certd_*_all.deb")).name
    sc.sh(f"cd {WORK} && apt-get install -y -q ./{deb}", env={"DEBIAN_FRONTEND": "noninteractive"})
    wait_for(lambda: sc.show("edge-certd", "ActiveState") == "active", 60, "edge-certd active")


@step
def test_service_autopkgtest_on_a_fresh_install_leaves_nothing_after_purge(scenario: Scenario) -> None:
    sc = scenario
    # The test's own drop-in (an admin's file, which purge rightly keeps) would be "left".
    sc.box.run(["rm", "-rf", "/etc/systemd/system/edge-certd.service.d"])
    sc.box.run(["systemctl", "daemon-reload"])
    _install_again(sc)
    _run_autopkgtests(sc, breaking=True)
    assert sc.box.run(["dpkg", "-s", "edge-certd"], check=False).returncode != 0


# A sync's update-ca-certificates runs ca-certificates-java's hook, which holds dpkg's lock for a
# moment (`dpkg --triggers-only`): apt waits for it, as an admin's apt would.
PURGE = ["apt-get", "purge", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "edge-certd"]
MOVED_STATE = "/srv/state"  # not named edge-certd*: purge removes only edge-certd's files there


def _writer(sc: Scenario, user: str) -> subprocess.Popen[str]:
    """Someone writing into the drop directory without pause, as a technician's loop of scp."""
    loop = f"i=0; while :; do echo x > {DROP}/w$i.txt 2>/dev/null; i=$(( (i + 1) % 200 )); done"
    argv = ["sh", "-c", loop]
    if user != "root":
        argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", *argv]
    return sc.box.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, 9)
    proc.wait(timeout=30)


@step
def test_purge_with_a_moved_state_directory_while_a_technician_writes_leaves_nothing(
    scenario: Scenario,
) -> None:
    sc = scenario
    _install_again(sc)
    sc.box.run(["usermod", "--append", "--groups", "edge-certd", "tech"])  # as the install step does
    sc.box.run(["install", "-d", "-m", "0755", MOVED_STATE])
    sc.box.path("/etc/edge-certd/config.yaml").write_text(f"state_dir: {MOVED_STATE}\n")
    dropin = sc.box.path("/etc/systemd/system/edge-certd.service.d/e2e-moved-state.conf")
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(f"[Service]\nReadWritePaths={MOVED_STATE}\n")
    sc.box.run(["systemctl", "daemon-reload"])
    sc.box.run(["systemctl", "restart", "edge-certd"])
    # Renamed into place: the daemon takes it as complete at once.
    sc.sh(f"install -m 0644 {WORK}/gateway-root.pem {DROP}/.root.tmp && mv {DROP}/.root.tmp {DROP}/root.pem")
    wait_for(lambda: sc.root_sha256 in sc.bundle(), 60, "the CA trusted with the moved state directory")
    written = set(sc.box.run(["ls", "-A", MOVED_STATE]).stdout.split())
    assert {"manifest.json", "journal-memory", "lock"} <= written, written

    writer = _writer(sc, "tech")
    try:
        wait_for(lambda: sc.box.path(f"{DROP}/w5.txt").exists(), 30, "the technician writing")
        r = sc.box.run(PURGE, env={"DEBIAN_FRONTEND": "noninteractive"}, check=False, timeout=400)
    finally:
        _stop(writer)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(dropin.parent)
    left = sc.box.run(["ls", "-A", MOVED_STATE], check=False)
    assert left.returncode != 0, f"{MOVED_STATE} keeps {left.stdout.split()} after purge"
    for gone in (CA_DIR, "/var/lib/edge-certd", "/etc/edge-certd"):
        assert not sc.box.path(gone).exists(), f"{gone} is left after purge"
    assert sc.bundle() == sc.baseline


@step
def test_purge_finishes_while_root_keeps_writing_into_the_drop_directory(scenario: Scenario) -> None:
    # Root is not stopped by the drop directory's mode: the removal is retried, and what is
    # still there then is named, never a failed purge.
    sc = scenario
    _install_again(sc)
    writer = _writer(sc, "root")
    try:
        wait_for(lambda: sc.box.path(f"{DROP}/w5.txt").exists(), 30, "root writing")
        r = sc.box.run(PURGE, env={"DEBIAN_FRONTEND": "noninteractive"}, check=False, timeout=400)
    finally:
        _stop(writer)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sc.box.run(["dpkg", "-s", "edge-certd"], check=False).returncode != 0
    if sc.box.path("/var/lib/edge-certd").exists():
        left = sc.box.run(["ls", "-laR", "/var/lib/edge-certd"], check=False).stdout
        # apt hands dpkg a pty: the maintainer scripts' stderr arrives on apt's stdout.
        said = r.stdout + r.stderr
        assert "could not remove all of /var/lib/edge-certd" in said, f"{said[-3000:]}\n{left[:3000]}"
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("edge-certd:")]
    print(f"{sc.release}: purge beside a root writer: {said or 'everything removed'}")
