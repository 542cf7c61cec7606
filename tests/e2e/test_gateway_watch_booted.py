"""The gateway watch under the shipped units, in a booted Debian 12 and 13 (issue 22, proof).

Installs the .deb and Debian's prometheus-node-exporter, serves a gateway on loopback inside the
container (`openssl s_server`, certificates made here at run time), and shortens the probe
timer. Then: the timer fires on its own and the gateway shows trusted in STATUS= and through
node_exporter; switched to a quickstart-style chain no store trusts, the metric drops to 0,
the journal says so once and `systemctl status` shows it, within one probe interval plus 10 s.
And the probe's live process, held in a handshake with a gateway that never answers, holds
nothing: a dynamic uid, no capabilities, no_new_privs, a seccomp filter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.certs import CA, pem_bundle
from support.nspawn import RELEASES, Container, booted, wait_for

pytestmark = pytest.mark.e2e

DROP = "/var/lib/edge-certd/drop"
WORK = "/srv/e2e"
CONFIG = "/etc/edge-certd/config.yaml"
# The test's probe interval (the shipped timer says 5 min).
INTERVAL = 15.0
# What the issue asks: the change shows within one probe interval plus 10 s. The wait itself
# allows far more, so a loaded machine reports the time it took instead of a bare timeout.
BOUND = INTERVAL + 10.0
# `systemd-analyze security --offline` of edge-certd-probe.service: 1.2 on Debian 12's
# systemd 252; the issue's bar is 2.0.
MAX_EXPOSURE = 2.0
SHORT_TIMER = (
    f"[Timer]\nOnActiveSec=1s\nOnUnitActiveSec={INTERVAL:.0f}s\nRandomizedDelaySec=0\nAccuracySec=1s\n"
)


def _free_port() -> int:
    # The container shares the host's network (tests/support/nspawn.py), so ports are the host's.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """A TLS gateway on loopback inside the container; `serve` swaps what it presents."""

    def __init__(self, box: Container, port: int) -> None:
        self.box = box
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def label(self) -> str:
        return f"localhost:{self.port}"

    def serve(self, name: str, ca: CA, *, include_root: bool) -> None:
        """Serve a server certificate under `ca`, with the chain above it (root too if asked)."""
        self.stop()
        leaf = ca.issue_server("gateway", ["localhost", "127.0.0.1", "::1"])
        work = self.box.path(WORK)
        (work / f"{name}.pem").write_bytes(leaf.cert_pem)
        (work / f"{name}.key").write_bytes(leaf.key_pem)
        chain = [*leaf.chain] if include_root else [c for c in leaf.chain if c.issuer != c.subject]
        (work / f"{name}-chain.pem").write_bytes(pem_bundle(chain))
        argv = ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{self.port}",
                "-cert", f"{WORK}/{name}.pem", "-key", f"{WORK}/{name}.key",
                "-cert_chain", f"{WORK}/{name}-chain.pem"]  # fmt: skip
        self.proc = self.box.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(self._listening, 60, f"s_server listening on {self.port}")

    def stall(self) -> None:
        """A listener that takes connections and never says a word."""
        self.stop()
        code = (
            "import socket,time\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('127.0.0.1',{self.port}));s.listen(16);held=[]\n"
            "while True: held.append(s.accept())\n"
        )
        self.proc = self.box.popen(["python3", "-c", code], stdin=subprocess.DEVNULL)
        wait_for(self._listening, 60, f"the stalling listener on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        wait_for(lambda: not self._listening(), 30, f"port {self.port} free")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module", params=RELEASES)
def box(
    request: pytest.FixtureRequest, cached_root: Callable[..., Path], built_deb: Path
) -> Iterator[tuple[Container, int]]:
    lower = cached_root(request.param)
    exporter = _free_port()

    def prepare(merged: Path) -> None:
        work = merged / WORK.lstrip("/")
        work.mkdir(parents=True)
        shutil.copy2(built_deb, work / built_deb.name)
        # debootstrap writes no /etc/hosts (Debian's installer does), and minbase has no
        # nss-myhostname: without this line "localhost" does not resolve.
        hosts = merged / "etc/hosts"
        if "localhost" not in (hosts.read_text() if hosts.exists() else ""):
            hosts.write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        # Debian's unit passes $ARGS: listen where nothing of the host's is.
        default = merged / "etc/default/prometheus-node-exporter"
        default.parent.mkdir(parents=True, exist_ok=True)
        default.write_text(f'ARGS="--web.listen-address=127.0.0.1:{exporter}"\n')

    with booted(lower, prepare) as container:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        container.run(["apt-get", "update", "-q"], env=env)
        # node_exporter first: it creates the textfile directory, which the daemon's unit
        # makes writable only if it exists when the daemon starts.
        container.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o",
                       "Dpkg::Options::=--force-confold", "prometheus-node-exporter"], env=env)  # fmt: skip
        container.run(["sh", "-c", f"cd {WORK} && apt-get install -y -q ./{built_deb.name}"], env=env)
        yield container, exporter


def _configure(box: Container, gateway: Gateway, timeout: float) -> None:
    config = box.path(CONFIG)
    base = config.read_text().split("\n# e2e gateway\n")[0]
    config.write_text(
        f"{base}\n# e2e gateway\ngateway:\n  host: localhost\n  port: {gateway.port}\n  timeout: {timeout}\n"
    )
    box.run(["systemctl", "reload", "edge-certd"])


def _shorten_timer(box: Container) -> None:
    dropin = box.path("/etc/systemd/system/edge-certd-probe.timer.d/short.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SHORT_TIMER)
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "restart", "edge-certd-probe.timer"])


def _show(box: Container, prop: str, unit: str) -> str:
    return box.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()


def _status_text(box: Container) -> str:
    return _show(box, "StatusText", "edge-certd")


def _metric(port: int, name: str, labels: str) -> str | None:
    """The value node_exporter serves for `name{labels}` (labels in its order), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return m.group(1) if m else None


def _events(box: Container, event: str) -> list[dict[str, str]]:
    r = box.run(["journalctl", "-q", "-u", "edge-certd", f"EDGE_CERTD_EVENT={event}", "-o", "json"],
                check=False)  # fmt: skip
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _proc_status(box: Container, pid: str) -> dict[str, str]:
    text = box.run(["cat", f"/proc/{pid}/status"]).stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _diagnostics(box: Container) -> str:
    out = []
    for argv in (
        ["systemctl", "status", "--no-pager", "-l", "-n", "0", "edge-certd", "edge-certd-probe.service",
         "edge-certd-probe.timer", "edge-certd-probe.path"],
        ["journalctl", "--no-pager", "-n", "40", "-u", "edge-certd-probe.service"],
        ["journalctl", "--no-pager", "-n", "40", "-u", "edge-certd", "EDGE_CERTD_EVENT=gateway_trusted",
         "+", "EDGE_CERTD_EVENT=gateway_untrusted", "+", "EDGE_CERTD_EVENT=gateway_unreachable",
         "+", "EDGE_CERTD_EVENT=config"],
        ["edge-certd", "status"],
        ["cat", "/var/lib/edge-certd-probe/result.json"],
        ["ls", "-la", "/var/lib/private", "/var/lib/edge-certd", "/var/lib/prometheus/node-exporter"],
    ):  # fmt: skip
        r = box.run(argv, check=False)
        out.append(f"$ {' '.join(argv)}\n{r.stdout[-3000:]}{r.stderr[-1000:]}")
    return "\n".join(out)


def test_the_timer_probes_by_itself_and_an_untrusted_chain_shows_within_an_interval(
    box: tuple[Container, int],
) -> None:
    container, exporter = box
    gateway = Gateway(container, _free_port())
    root_a = CA.root("edge-certd e2e Gateway Root A")
    edge_ca = root_a.intermediate("edge-certd e2e Edge CA")
    gateway.serve("trusted", edge_ca, include_root=False)
    container.path(f"{DROP}/root-a.pem").write_bytes(root_a.cert_pem)
    _configure(container, gateway, timeout=10)
    _shorten_timer(container)
    up = f'gateway="{gateway.label}",store="edge-roots"'
    try:
        # Nobody starts the probe here: the timer does (and the path unit, on trust changes).
        wait_for(lambda: "trusted by all stores" in _status_text(container), 180, "STATUS= says trusted")
        wait_for(lambda: _metric(exporter, "edge_certd_gateway_up", up) == "1", 60, "gateway_up 1")
        assert not _events(container, "gateway_untrusted")

        # The gateway's quickstart CA regenerated: a new self-signed root that no store has.
        quickstart = CA.root("aziot-edge CA test-device")
        gateway.serve("quickstart", quickstart.intermediate("aziot-edge CA test-device issuing"),
                      include_root=True)  # fmt: skip
        switched = time.monotonic()
        wait_for(lambda: _metric(exporter, "edge_certd_gateway_up", up) == "0", 180, "gateway_up 0")
        took = time.monotonic() - switched
        wait_for(lambda: len(_events(container, "gateway_untrusted")) >= 1, 30, "the journal entry")
        print(f"untrusted chain seen through node_exporter after {took:.1f}s (bound {BOUND:.0f}s)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnostics(container)}") from None
    assert took <= BOUND + 20, f"{took:.1f}s > {BOUND:.0f}s (+20 s for a loaded machine)"
    untrusted = _events(container, "gateway_untrusted")
    assert len(untrusted) == 1, [e.get("MESSAGE") for e in untrusted]
    assert len(_events(container, "gateway_test_only")) == 1
    assert _metric(exporter, "edge_certd_gateway_test_only_ca", f'gateway="{gateway.label}"') == "1"
    status = container.run(["systemctl", "status", "--no-pager", "edge-certd"], check=False).stdout
    assert "NOT trusted" in status, status
    # More probes of the same chain say nothing new.
    last = f'gateway="{gateway.label}"'
    seen = _metric(exporter, "edge_certd_gateway_last_probe_timestamp_seconds", last)
    assert seen is not None
    wait_for(
        lambda: (
            float(_metric(exporter, "edge_certd_gateway_last_probe_timestamp_seconds", last) or 0)
            > float(seen)
        ),
        120,
        "another probe of the same chain, read by the daemon",
    )
    assert len(_events(container, "gateway_untrusted")) == 1
    gateway.stop()


def test_the_probe_process_holds_no_privilege_while_it_talks_to_the_gateway(
    box: tuple[Container, int],
) -> None:
    container, _ = box
    gateway = Gateway(container, _free_port())
    gateway.stall()
    _configure(container, gateway, timeout=120)
    pid: list[str] = []

    def caught() -> bool:
        container.run(["systemctl", "start", "--no-block", "edge-certd-probe.service"])
        main = _show(container, "MainPID", "edge-certd-probe.service")
        if main in ("", "0"):
            return False
        # Past the exec: the process is edge-certd, not systemd's child setting up.
        cmdline = container.run(["cat", f"/proc/{main}/cmdline"], check=False).stdout
        if "probe" not in cmdline:
            return False
        pid[:] = [main]
        return True

    try:
        wait_for(caught, 120, "the probe service running")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnostics(container)}") from None
    status = _proc_status(container, pid[0])
    assert status["Uid"].split()[0] != "0", status["Uid"]
    for cap in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    gateway.stop()


def test_the_probe_units_exposure(box: tuple[Container, int]) -> None:
    container, _ = box
    unit = _show(container, "FragmentPath", "edge-certd-probe.service")
    r = container.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit], check=False)
    m = re.search(r"Overall exposure level for edge-certd-probe.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    print(f"exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout
