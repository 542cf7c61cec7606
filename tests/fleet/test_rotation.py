"""A gateway's root rotation across a fleet, rehearsed end to end on real engines (issue 23).

N devices (EDGE_CERTD_FLEET_N, default 4; Debian 12 and 13 in turn) are booted containers with
edge-certd, sshd, prometheus-node-exporter and a client that publishes to the gateway over TLS
every second with the bundle edge-certd writes. The host serves a signed apt repository over
HTTP, runs the gateway (mosquitto), a Prometheus server that scrapes every device and evaluates
docs/alerts.yml, and Ansible, which runs docs/fleet/roots-upgrade.yml over ssh.

The steps: v1 (root A) everywhere; v2 (A + B) while one device is off, readiness from
Prometheus alone; the gateway switches to chain B with no failed connection; the device that
was off comes back, is named by EdgeCertdDeviceLacksFleetRoot, fails, and the next Ansible run
brings it up; v3 (B only) removes A from every store; a rollback to v2 restores A. Then the
classic mistake: v3 published while the gateway still serves chain A.

The timeline (publish to N/N ready, the slowest device, failed connections, Prometheus' view)
is printed: run with -s or -rP. EDGE_CERTD_FLEET_REPORT=FILE also writes it as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import nspawn
from support.certs import CA
from support.fleet import Ansible, AptRepository, Gateway, Prometheus
from support.fleet_devices import FLEET_PACKAGES, Counts, Device, boot_all
from support.nspawn import SBIN_PATH, unavailable, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
N = int(os.environ.get("EDGE_CERTD_FLEET_N", "4"))
PACKAGE = "contoso-gateway-roots"
LACKS = "EdgeCertdDeviceLacksFleetRoot"
HOST_TOOLS = (
    "ansible-playbook",
    "apt-ftparchive",
    "gpg",
    "mosquitto",
    "prometheus",
    "dpkg-scanpackages",
    "ssh-keygen",
)
# Deadlines for a 2-core machine with two CPU-bound processes beside the run.
ROLLOUT = 300.0 + 20 * N
READY = 180.0


def _roots_package(out: Path, version: str, *roots: Path) -> Path:
    config = out / "config.yaml"
    config.write_text("{}\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_certd",
            "--config",
            str(config),
            "package",
            *map(str, roots),
            "--name",
            PACKAGE,
            "--version",
            version,
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out / f"{PACKAGE}_{version}_all.deb"


def _edge_certd_deb() -> Path:
    """tests/run-all's EDGE_CERTD_E2E_DEB, else `make deb` here (as tests/e2e/conftest.py does)."""
    prebuilt = os.environ.get("EDGE_CERTD_E2E_DEB")
    if prebuilt:
        assert Path(prebuilt).is_file(), f"EDGE_CERTD_E2E_DEB={prebuilt} is not a file"
        return Path(prebuilt).resolve()
    build = subprocess.run(["make", "-s", "deb"], cwd=REPO, capture_output=True, text=True, check=False)
    assert build.returncode == 0, f"make deb failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    debs = sorted((REPO / "dist").glob("edge-certd_*_all.deb"))
    assert len(debs) == 1, f"expected one .deb in dist/, found {debs}"
    return debs[0]


@dataclass
class Step:
    """One line of the timeline."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name}: " + ", ".join(f"{k}={v}" for k, v in self.figures.items())


class Rehearsal:
    """The fleet and its engines, and the checks every step makes."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.devices: list[Device] = []
        self.timeline: list[Step] = []
        self.closers: list[Any] = []
        self.sha: dict[str, str] = {}
        self.debs: dict[str, Path] = {}
        self.chains: dict[str, tuple[bytes, bytes]] = {}
        self.root_files: dict[str, Path] = {}

    # -- set-up -----------------------------------------------------------------------------

    def setup(self, edge_certd_deb: Path) -> None:
        roots = {
            "A": CA.root("Contoso Gateway Root A", key_type="rsa"),
            "B": CA.root("Contoso Gateway Root B"),
        }
        for name, ca in roots.items():
            self.sha[name] = hashlib.sha256(ca.der).hexdigest()
            self.root_files[name] = self.work / f"root-{name}.pem"
            self.root_files[name].write_bytes(ca.cert_pem)
            # The gateway's Edge CA under each root, and its server certificate.
            leaf = ca.intermediate(f"Edge CA under {name}").issue_server("gateway", ["localhost"])
            self.chains[name] = (leaf.chain_pem(), leaf.key_pem)
        a, b = self.root_files["A"], self.root_files["B"]
        self.debs = {
            "1": _roots_package(self.work, "1", a),
            "2": _roots_package(self.work, "2", a, b),
            "3": _roots_package(self.work, "3", b),
        }
        key = self.work / "fleet-ssh-key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet rehearsal", "-f", str(key)],
            check=True,
        )
        self.repo = AptRepository(self.work)
        self.closers.append(self.repo)
        self.gateway = Gateway(*self.chains["A"])
        self.closers.append(self.gateway)
        log_dir = self.work / "debootstrap"
        log_dir.mkdir()
        lowers = {r: nspawn.cached_root(log_dir, r, FLEET_PACKAGES) for r in nspawn.RELEASES}
        for i in range(N):
            release = nspawn.RELEASES[i % 2]
            device = Device(
                f"dev{i + 1:02d}-{release}",
                release,
                lowers[release],
                edge_certd_deb,
                (key.with_suffix(".pub")).read_text(),
                self.repo.keyring,
                self.repo.url,
                self.gateway.port,
            )
            self.devices.append(device)
        self.closers.extend(self.devices)
        took = boot_all(self.devices)
        self.prometheus = Prometheus(self.work, {d.name: d.exporter_port for d in self.devices})
        self.closers.append(self.prometheus)
        self.ansible = Ansible(self.work, {d.name: d.ssh_port for d in self.devices}, key, forks=max(5, N))
        self.record(
            "boot",
            devices=N,
            releases="+".join(sorted({d.release for d in self.devices})),
            seconds=round(took),
        )

    def close(self) -> None:
        def close_one(thing: Any) -> None:
            try:
                thing.destroy() if isinstance(thing, Device) else thing.close()
            except Exception as exc:  # noqa: BLE001 - tear everything down, report each
                print(f"fleet teardown: {exc}")

        engines = [t for t in self.closers if not isinstance(t, Device)]
        # The devices power off side by side (each waits for its container's systemd).
        with ThreadPoolExecutor(max_workers=max(1, len(self.devices))) as pool:
            list(pool.map(close_one, self.devices))
        for thing in reversed(engines):
            close_one(thing)

    # -- the timeline -----------------------------------------------------------------------

    def record(self, name: str, **figures: Any) -> Step:
        step = Step(name, figures)
        self.timeline.append(step)
        print(f"[fleet] {step.line()}", flush=True)
        return step

    def report(self) -> str:
        lines = [f"fleet rehearsal timeline (N={N}):", *(f"  {s.line()}" for s in self.timeline)]
        path = os.environ.get("EDGE_CERTD_FLEET_REPORT")
        if path:
            Path(path).write_text(
                json.dumps([{"step": s.name, **s.figures} for s in self.timeline], indent=1)
            )
        return "\n".join(lines)

    # -- what the steps share ---------------------------------------------------------------

    @property
    def up(self) -> list[Device]:
        return [d for d in self.devices if d.on]

    def names(self, shas: set[str]) -> set[str]:
        by_sha = {v: k for k, v in self.sha.items()}
        return {by_sha.get(s, s[:12]) for s in shas}

    def counts(self) -> dict[str, Counts]:
        return {d.name: d.counts() for d in self.up}

    def failures(self, since: dict[str, Counts], devices: list[Device] | None = None) -> dict[str, int]:
        now = self.counts()
        return {d.name: (now[d.name] - since.get(d.name, Counts())).fail for d in devices or self.up}

    def clients_succeed(self, since: dict[str, Counts], times: int = 3) -> None:
        """Every up device's client has connected `times` more times since `since`."""
        for d in self.up:
            base = since.get(d.name, Counts())
            wait_for(
                lambda d=d, base=base: (d.counts() - base).ok >= times,
                120,
                f"{d.name}'s client connects {times} times (last error: {d.last_error()!r})",
            )

    def view(self) -> dict[str, Any]:
        """Prometheus' view: the readiness query's two halves, and the fleet's alerts."""
        prom = self.prometheus
        roots = {
            self.names({r["metric"]["sha256"]}).pop(): int(float(r["value"][1]))
            for r in prom.query("edge_certd:root_devices:count")
        }
        view: dict[str, Any] = {
            "devices_up": int(prom.scalar("edge_certd:devices_up:count") or 0),
            "root_devices": roots,
        }
        for alert in (LACKS, "EdgeCertdRootHeldForGateway"):
            states = prom.alerts(alert)
            if states:
                view[alert] = states
        return view

    def ready(self, want: set[str]) -> bool:
        """The readiness query: every up device trusts each root of `want`, and no other."""
        v = self.view()
        n = len(self.up)
        return v["devices_up"] == n and v["root_devices"] == {r: n for r in want}

    def roll_out(self, name: str, version: str, want: set[str], *extra_vars: str) -> Step:
        """Publish `version` (the repository then holds versions 1..version), run the playbook,
        and time each device and Prometheus' readiness from the moment of publishing."""
        before = self.counts()
        published = self.repo.publish([self.debs[v] for v in sorted(self.debs) if v <= version])
        run = self.ansible.start(*extra_vars)
        wanted = {self.sha[r] for r in want}
        at: dict[str, float] = {}
        prometheus_ready: float | None = None  # Prometheus' readiness, watched from publishing on
        ansible_done: float | None = None
        deadline = time.monotonic() + ROLLOUT
        while time.monotonic() < deadline:
            for d in self.up:
                if d.name not in at and d.trusts() == wanted:
                    at[d.name] = time.monotonic() - published
            if prometheus_ready is None and self.ready(want):
                prometheus_ready = time.monotonic() - published
            if ansible_done is None and run.poll() is not None:
                ansible_done = time.monotonic() - published
            if len(at) == len(self.up) and prometheus_ready is not None:
                break
            if run.poll() is not None and len(at) < len(self.up):
                time.sleep(1)  # apt returned: the trigger has synced; a last look
                for d in self.up:
                    if d.name not in at and d.trusts() == wanted:
                        at[d.name] = time.monotonic() - published
                break
            time.sleep(0.2)
        out, _ = run.communicate(timeout=ROLLOUT)
        ansible_s = ansible_done if ansible_done is not None else time.monotonic() - published
        off = [d.name for d in self.devices if not d.on]
        # ansible-playbook exits 4 when a host was unreachable: only the device that is off.
        assert run.returncode == (4 if off else 0), (
            f"ansible-playbook exited {run.returncode}:\n{out[-4000:]}"
        )
        for name_off in off:
            # The play recap: "dev04-trixie : ok=0 changed=0 unreachable=1 failed=0 ...".
            assert re.search(rf"^{name_off}\s+:.*unreachable=1", out, re.M), out[-4000:]
        missing = [d.name for d in self.up if d.name not in at]
        assert not missing, f"{name}: {missing} do not trust {sorted(want)}: " + "; ".join(
            f"{d.name}: {sorted(self.names(d.trusts()))}\n{d.journal()}" for d in self.up if d.name in missing
        )
        wait_for(
            lambda: self.ready(want), READY, f"{name}: Prometheus says {sorted(want)} on every up device"
        )
        if prometheus_ready is None:
            prometheus_ready = time.monotonic() - published
        self.clients_succeed(before)
        slowest = max(at, key=lambda k: at[k])
        return self.record(
            name,
            publish_to_ready_s=round(prometheus_ready, 1),
            ansible_s=round(ansible_s, 1),
            slowest=f"{slowest} {at[slowest]:.1f}s",
            devices_ready=f"{len(at)}/{len(self.up)}",
            off=off or "-",
            failed=sum(self.failures(before).values()),
            prometheus=self.view(),
        )

    def stores_hold(self, want: set[str]) -> None:
        """Every store on every up device holds exactly `want` of the rehearsal's roots."""
        mine = set(self.sha.values())
        for d in self.up:
            for store, shas in d.stores().items():
                assert shas & mine == {self.sha[r] for r in want}, (
                    f"{d.name} {store}: {sorted(self.names(shas & mine))}"
                )

    def serve(self, root: str) -> float:
        return self.gateway.serve(*self.chains[root], verify_with=self.root_files[root])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    reason = nspawn.missing_for_boot()
    if reason:
        unavailable(reason)
    missing = [t for t in HOST_TOOLS if not shutil.which(t, path=SBIN_PATH)]
    if missing:
        unavailable(f"missing {', '.join(missing)} (tests/run-all installs them)")
    nspawn.remove_stale_runs()
    rehearsal = Rehearsal(tmp_path_factory.mktemp("fleet"))
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{SBIN_PATH}:{old_path}"
    try:
        rehearsal.setup(_edge_certd_deb())
        yield rehearsal
    finally:
        os.environ["PATH"] = old_path
        rehearsal.report()  # EDGE_CERTD_FLEET_REPORT gets the whole timeline, however far it got
        rehearsal.close()


def test_a_root_rotation_across_the_fleet_fails_no_connection(fleet: Rehearsal) -> None:
    late = fleet.devices[-1]  # off during step 2 and 3

    # 0. Nothing trusted yet: every client fails against chain A.
    start = fleet.counts()
    wait_for(
        lambda: all((d.counts() - start[d.name]).fail >= 1 for d in fleet.up),
        120,
        "every client fails while the device trusts no root",
    )

    # 1. v1 (root A) everywhere; every client succeeds.
    step = fleet.roll_out("1. v1 (A)", "1", {"A"})
    step.figures["failed"] = f"{step.figures['failed']} (before A arrived: expected)"
    fleet.stores_hold({"A"})
    before = fleet.counts()
    fleet.clients_succeed(before)
    assert sum(fleet.failures(before).values()) == 0, fleet.failures(before)

    # 2. One device is off; v2 (A + B) reaches the others; Prometheus alone says ready.
    late.power_off()
    wait_for(lambda: fleet.view()["devices_up"] == len(fleet.up), READY, "Prometheus sees the device gone")
    step = fleet.roll_out("2. v2 (A+B), one device off", "2", {"A", "B"})
    assert step.figures["failed"] == 0, step.figures

    # 3. The gateway switches to chain B: no failed connection.
    before = fleet.counts()
    fleet.serve("B")
    fleet.clients_succeed(before, times=5)
    for d in fleet.up:
        d.probe()  # the gateway watch sees chain B now (its timer would within 5 minutes)
    failed = fleet.failures(before)
    fleet.record(
        "3. gateway serves chain B", failed=sum(failed.values()), by_device=failed, prometheus=fleet.view()
    )
    assert sum(failed.values()) == 0, failed

    # 4. The device comes back with A only: the fleet view names it, its client fails against
    # chain B, and the next Ansible run brings it up.
    before = fleet.counts()
    t0 = time.monotonic()
    late.power_on()
    boot_s = time.monotonic() - t0
    late_base = late.counts()  # its counter file survived the power cut
    pending_s = wait_for(
        lambda: late.name in fleet.prometheus.alerts(LACKS),
        READY,
        f"{LACKS} names {late.name}",
    )
    assert set(fleet.prometheus.alerts(LACKS)) == {late.name}, fleet.prometheus.alerts(LACKS)
    wait_for(
        lambda: (late.counts() - late_base).fail >= 1, 120, f"{late.name}'s client fails against chain B"
    )
    # The rule's `for: 2m` as docs/alerts.yml ships it: pending first, then firing.
    firing_s = wait_for(
        lambda: fleet.prometheus.alerts(LACKS).get(late.name) == "firing", READY + 150, f"{LACKS} fires"
    )
    state = fleet.prometheus.alerts(LACKS)
    assert state == {late.name: "firing"}, state
    view_back = fleet.view()
    late_failed = (late.counts() - late_base).fail
    step = fleet.roll_out("4. the device that was off, next Ansible run", "2", {"A", "B"})
    resolved_s = wait_for(lambda: not fleet.prometheus.alerts(LACKS), READY, "the alert resolves")
    others = fleet.failures(before, [d for d in fleet.up if d is not late])
    step.figures.update(
        boot_s=round(boot_s, 1),
        pending_after_boot_s=round(pending_s, 1),
        firing_after_boot_s=round(pending_s + firing_s, 1),
        alert_state=state,
        late_failed_before_upgrade=late_failed,
        view_when_back=view_back,
        alert_resolved_after_s=round(resolved_s, 1),
        others_failed=sum(others.values()),
    )
    print(f"[fleet] step 4, the device that was off: {step.figures}")
    assert sum(others.values()) == 0, others

    # 5. v3 (B only): A is gone from every store on every device; clients keep succeeding.
    step = fleet.roll_out("5. v3 (B)", "3", {"B"})
    fleet.stores_hold({"B"})
    assert step.figures["failed"] == 0, step.figures

    # 6. Roll back: v2 again (the repository drops v3), A is back everywhere.
    step = fleet.roll_out("6. rollback to v2", "2", {"A", "B"}, "roots_version=2")
    fleet.stores_hold({"A", "B"})
    assert step.figures["failed"] == 0, step.figures
    print("\n" + fleet.report())  # -rP shows it with the test's output


def test_the_classic_mistake_is_held_until_the_gateway_moves(fleet: Rehearsal) -> None:
    """v3 (B only) published while the gateway still serves chain A: A is held, no client fails,
    EdgeCertdRootHeldForGateway names every device; the gateway's move releases it."""
    if not all(d.trusts() == {fleet.sha["A"], fleet.sha["B"]} for d in fleet.up):
        # Run on its own (-k): the fleet first gets the overlap, v2.
        fleet.roll_out("7. v2 (A+B) first", "2", {"A", "B"}, "roots_version=2")
    # The gateway is back on chain A (a rollback the devices allow: they trust A and B), and
    # every device's gateway watch has seen it.
    fleet.serve("A")
    for d in fleet.up:
        d.probe()
    before = fleet.counts()
    published = fleet.repo.publish(list(fleet.debs.values()))
    run = fleet.ansible.start()
    out, _ = run.communicate(timeout=ROLLOUT)
    assert run.returncode == 0, out[-4000:]
    fleet.stores_hold({"A", "B"})  # held: the gateway's last probe anchors at A
    names = {d.name for d in fleet.up}
    held_s = wait_for(
        lambda: set(fleet.prometheus.alerts("EdgeCertdRootHeldForGateway")) == names,
        READY,
        "EdgeCertdRootHeldForGateway names every device",
    )
    fleet.clients_succeed(before)
    fleet.record(
        "7a. the classic mistake: v3 before the gateway moves",
        alert_after_publish_s=round(time.monotonic() - published, 1),
        alert_wait_s=round(held_s, 1),
        failed=sum(fleet.failures(before).values()),
        prometheus=fleet.view(),
    )
    assert sum(fleet.failures(before).values()) == 0

    moved = fleet.serve("B")
    for d in fleet.up:
        d.probe()  # the next probe releases the hold
    wait_for(lambda: all(d.trusts() == {fleet.sha["B"]} for d in fleet.up), 120, "A released on every device")
    fleet.stores_hold({"B"})
    released = wait_for(
        lambda: fleet.ready({"B"}) and not fleet.prometheus.alerts("EdgeCertdRootHeldForGateway"),
        READY,
        "Prometheus: B only, no hold",
    )
    fleet.clients_succeed(before)
    failed = sum(fleet.failures(before).values())
    fleet.record(
        "7b. the gateway serves chain B: hold released",
        move_to_released_s=round(time.monotonic() - moved, 1),
        prometheus_wait_s=round(released, 1),
        failed=failed,
        prometheus=fleet.view(),
    )
    assert failed == 0
    print("\n" + fleet.report())
