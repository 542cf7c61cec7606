"""The rehearsal's devices: booted Debian 12 and 13 containers with edge-certd, sshd,
prometheus-node-exporter and a client that publishes to the gateway every second.

The containers share the host's network namespace (tests/support/nspawn.py), so each device's
sshd and node_exporter listen on 127.0.0.1 on a port of their own, picked at run time.
A device can be powered off and on again: its overlay's upper directory (everything apt,
dpkg and edge-certd wrote) survives, as a real device's disk does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from support.loopback import free_port
from support.nspawn import CACHE_DIR, RUN_PREFIX, Container, pem_fingerprints, wait_for

# What a device needs besides the cached root's packages, installed once per machine into a
# cached copy of the root (nspawn.py's `extra`): the fleet's engines, Ansible's apt module
# (python3-apt) and edge-certd's own Depends, so that devices install the .deb with dpkg and
# never reach the Debian archive during a run.
FLEET_PACKAGES = (
    "prometheus-node-exporter",
    "mosquitto-clients",
    "python3-apt",
    "python3-cryptography",
    "python3-pydantic",
    "python3-systemd",
    "python3-watchdog",
    "python3-yaml",
    "python3-prometheus-client",
)
STORES = {
    "edge-roots": "/var/lib/edge-certd/bundles/edge-roots.pem",
    "ca-bundle": "/var/lib/edge-certd/bundles/ca-bundle.pem",
    "system": "/etc/ssl/certs/ca-certificates.crt",
}
CLIENT_DIR = "/var/lib/fleet-client"
# Units a rehearsal device does not need: the archive's timers (the devices reach only the
# fleet's repository) and housekeeping that would only take CPU from the run.
MASKED = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
)

CLIENT = r"""#!/bin/bash
# The rehearsal's client: one MQTT publish over TLS a second, trusting only the bundle
# edge-certd writes. A failed attempt is retried at once; only a failed retry is a failure.
port=$1 name=$2 dir=/var/lib/fleet-client
mkdir -p "$dir"
read -r ok fail retried < "$dir/counts" 2>/dev/null || { ok=0; fail=0; retried=0; }
pub() {
    timeout 10 mosquitto_pub -h localhost -p "$port" -i "$name" -t "fleet/$name" -m x \
        --cafile /var/lib/edge-certd/bundles/edge-roots.pem 2>"$dir/last-error"
}
while :; do
    if pub; then ok=$((ok + 1))
    elif pub; then ok=$((ok + 1)); retried=$((retried + 1))
    else fail=$((fail + 1)); fi
    echo "$ok $fail $retried" > "$dir/counts.tmp" && mv "$dir/counts.tmp" "$dir/counts"
    sleep 1
done
"""


@dataclass(frozen=True, kw_only=True)
class Counts:
    ok: int = 0
    fail: int = 0
    retried: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            ok=self.ok - other.ok, fail=self.fail - other.fail, retried=self.retried - other.retried
        )


class Device:
    """One device: a container on an overlay of the cached root of its release."""

    def __init__(
        self,
        name: str,
        release: str,
        lower: Path,
        deb: Path,
        pubkey: str,
        keyring: Path,
        repo_url: str,
        gateway_port: int,
    ) -> None:
        self.name, self.release = name, release
        self.deb, self.pubkey, self.keyring = deb, pubkey, keyring
        self.repo_url, self.gateway_port = repo_url, gateway_port
        self.ssh_port = free_port()
        self.exporter_port = free_port()
        self.box = Container(lower, Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{name}-", dir=CACHE_DIR)))
        self.on = False

    # -- lifecycle ---------------------------------------------------------------------------

    def _prepare(self, merged: Path) -> None:
        def put(path: str, text: str | bytes, mode: int = 0o644) -> None:
            target = merged / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            if isinstance(text, bytes):
                target.write_bytes(text)
            else:
                target.write_text(text)
            target.chmod(mode)

        shutil.copy2(self.deb, merged / "srv" / self.deb.name)
        put("/usr/local/bin/fleet-client", CLIENT, 0o755)
        put("/etc/hosts", "127.0.0.1 localhost\n")  # the gateway listens on IPv4 loopback only
        put("/etc/ssh/sshd_config.d/fleet.conf", f"Port {self.ssh_port}\nListenAddress 127.0.0.1\n")
        (merged / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        put("/root/.ssh/authorized_keys", self.pubkey, 0o600)
        # Only the textfile collector (edge-certd.prom): cheap to scrape every second.
        put(
            "/etc/default/prometheus-node-exporter",
            f'ARGS="--web.listen-address=127.0.0.1:{self.exporter_port} --collector.disable-defaults '
            '--collector.textfile --collector.textfile.directory=/var/lib/prometheus/node-exporter"\n',
        )
        # The fleet's repository is the only apt source, signed by the rehearsal's key.
        put("/etc/apt/sources.list", "")
        put("/etc/apt/keyrings/fleet-archive-keyring.gpg", self.keyring.read_bytes())
        put(
            "/etc/apt/sources.list.d/fleet.list",
            f"deb [signed-by=/etc/apt/keyrings/fleet-archive-keyring.gpg] {self.repo_url} ./\n",
        )
        # ca-certificates-java's hook would start a JVM on every trust change of every device,
        # besides the one edge-certd's own Java truststore takes (keytool, on cryptography
        # older than 45): JVMs are what limits N on two cores (docs/FLEET.md).
        (merged / "etc/ca-certificates/update.d/jks-keystore").unlink(missing_ok=True)
        for unit in MASKED:
            put(f"/etc/systemd/system/{unit}", "")
            (merged / "etc/systemd/system" / unit).unlink()
            (merged / "etc/systemd/system" / unit).symlink_to("/dev/null")

    def boot(self) -> None:
        """First boot: install edge-certd, point its gateway watch at the gateway, start the client."""
        self.box.boot(self._prepare)
        self.on = True
        self.box.run(["dpkg", "-i", f"/srv/{self.deb.name}"], env={"DEBIAN_FRONTEND": "noninteractive"})
        config = self.box.path("/etc/edge-certd/config.yaml")
        config.write_text(
            f"{config.read_text()}\n# fleet rehearsal\ngateway:\n  host: localhost\n"
            f"  port: {self.gateway_port}\n  timeout: 10\n"
        )
        self.box.run(["systemctl", "restart", "edge-certd.service"])
        self.start_client()

    def start_client(self) -> None:
        self.box.popen(
            ["/usr/local/bin/fleet-client", str(self.gateway_port), self.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def power_off(self) -> None:
        """Stop the container as a power cut would, keeping its disk (the overlay's upper)."""
        box = self.box
        for helper in box.helpers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(helper.pid, signal.SIGKILL)
            helper.wait(timeout=10)
        box.helpers = []
        if box.nspawn is not None and box.nspawn.poll() is None:
            box.nspawn.terminate()
            box.nspawn.wait(timeout=60)
        for pid in box._container_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                subprocess.run(["umount", str(box.merged)], capture_output=True).returncode == 0
                or not os.path.ismount(box.merged)
            ),
            30,
            f"{self.name}'s overlay unmounted",
            interval=0.5,
        )
        self.on = False

    def power_on(self) -> None:
        self.box.boot()
        self.on = True
        self.start_client()

    def destroy(self) -> None:
        self.box.shutdown()

    # -- what the test reads ------------------------------------------------------------------

    def stores(self) -> dict[str, set[str]]:
        """Fingerprints in each trust store edge-certd keeps (empty while one is missing)."""
        out = {}
        for store, inside in STORES.items():
            try:
                out[store] = pem_fingerprints(self.box.path(inside).read_text())
            except FileNotFoundError:
                out[store] = set()
        return out

    def trusts(self) -> set[str]:
        return self.stores()["edge-roots"]

    def counts(self) -> Counts:
        try:
            ok, fail, retried = self.box.path(f"{CLIENT_DIR}/counts").read_text().split()
        except (FileNotFoundError, ValueError):
            return Counts()
        return Counts(ok=int(ok), fail=int(fail), retried=int(retried))

    def last_error(self) -> str:
        try:
            return self.box.path(f"{CLIENT_DIR}/last-error").read_text()[-300:]
        except FileNotFoundError:
            return ""

    def probe(self) -> None:
        """One run of the gateway watch (edge-certd-probe.service), as its timer would start it."""
        for _ in range(5):
            r = self.box.run(["systemctl", "start", "edge-certd-probe.service"], timeout=120, check=False)
            if r.returncode == 0:
                return
            show = self.box.run(
                [
                    "systemctl",
                    "show",
                    "--value",
                    "-p",
                    "Result",
                    "-p",
                    "ExecMainStatus",
                    "edge-certd-probe.service",
                ],
                check=False,
            ).stdout.split()
            # systemd inside the container could not set the unit up ("resources": its executor
            # or its cgroup, 219/CGROUP, on this mixed cgroup v1/v2 host, while the previous
            # run's cgroup was torn down): the probe itself never ran, so it is started again.
            if "resources" not in show and "219" not in show:
                break
            time.sleep(1)
        log = self.box.run(
            ["journalctl", "--no-pager", "-n", "30", "-u", "edge-certd-probe.service"], check=False
        ).stdout
        raise AssertionError(f"{self.name}: edge-certd-probe.service failed:\n{r.stderr}\n{log}")

    def journal(self, *match: str, lines: int = 30) -> str:
        r = self.box.run(
            ["journalctl", "--no-pager", "-n", str(lines), "-u", "edge-certd", *match], check=False
        )
        return r.stdout


def boot_all(devices: Sequence[Device]) -> float:
    """Boot every device at once (threads: each waits on its container); the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for future in [pool.submit(d.boot) for d in devices]:
            future.result()
    return time.monotonic() - start
