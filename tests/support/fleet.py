"""The rehearsal's real engines on this host: a signed apt repository over HTTP, mosquitto
gateways, a Prometheus server and Ansible (tests/fleet/test_rotation.py, issue 23).

Everything listens on 127.0.0.1 on ports picked at run time: the devices (booted containers,
tests/support/fleet_devices.py) share the host's network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from support.loopback import free_port
from support.nspawn import wait_for

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "docs/fleet/roots-upgrade.yml"
ALERTS = REPO / "docs/alerts.yml"


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class AptRepository:
    """A flat apt repository signed with a throwaway key, served by `python3 -m http.server`.

    Publishing rewrites Packages, Release and InRelease (clearsigned), so the devices' apt
    checks the signature as it would on a real mirror.
    """

    def __init__(self, work: Path) -> None:
        self.dir = work / "repo"
        self.dir.mkdir()
        self.gnupg = work / "gnupg"
        self.gnupg.mkdir(mode=0o700)
        self.keyring = work / "fleet-archive-keyring.gpg"
        self._gpg(
            "--quick-generate-key",
            "edge-certd fleet rehearsal <fleet@example.invalid>",
            "ed25519",
            "sign",
            "1d",
        )
        self.keyring.write_bytes(self._gpg("--export", capture=True))
        self.port = free_port()
        self.server = subprocess.Popen(
            [
                "/usr/bin/python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(self.dir),
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.publish([])
        wait_for(lambda: _listening(self.port), 30, "the repository's web server listens")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _gpg(self, *args: str, capture: bool = False, cwd: Path | None = None) -> bytes:
        r = subprocess.run(
            [
                "gpg",
                "--homedir",
                str(self.gnupg),
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                *args,
            ],
            capture_output=True,
            cwd=cwd,
            check=False,
        )
        assert r.returncode == 0, f"gpg {args[0]}: {r.stderr.decode(errors='replace')}"
        return r.stdout

    def publish(self, debs: Sequence[Path]) -> float:
        """Make the repository hold exactly `debs`; the monotonic time the signed index was out."""
        for old in self.dir.glob("*.deb"):
            old.unlink()
        for deb in debs:
            shutil.copy2(deb, self.dir / deb.name)
        for name in ("Packages", "Release", "InRelease", "Release.gpg"):
            (self.dir / name).unlink(missing_ok=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "-m", ".", "/dev/null"], cwd=self.dir, capture_output=True, check=True
        ).stdout
        (self.dir / "Packages").write_bytes(packages)
        release = subprocess.run(
            [
                "apt-ftparchive",
                "-o",
                "APT::FTPArchive::Release::Origin=edge-certd-fleet",
                "-o",
                "APT::FTPArchive::Release::Label=edge-certd-fleet",
                "release",
                ".",
            ],
            cwd=self.dir,
            capture_output=True,
            check=True,
        ).stdout
        (self.dir / "Release").write_bytes(release)
        self._gpg("--clearsign", "--output", "InRelease", "Release", cwd=self.dir)
        return time.monotonic()

    def close(self) -> None:
        _stop(self.server)
        # gpg started an agent for the throwaway key; it would outlive the run.
        subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "gpg-agent"], check=False)


class Gateway:
    """mosquitto on loopback; `serve()` swaps its certificate and key and reloads (SIGHUP), so
    the listener never closes: mosquitto 2 reloads a listener's certificates on SIGHUP."""

    def __init__(self, chain: bytes, key: bytes) -> None:
        # mosquitto started by root drops to its own user, which must read the files (and so
        # pass through their directory): a directory of its own, outside pytest's private tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="edge-certd-fleet-gateway-"))
        self.dir.chmod(0o711)
        self.port = free_port()
        self._write(chain, key)
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"certfile {self.dir / 'chain.pem'}\nkeyfile {self.dir / 'key.pem'}\n"
            "allow_anonymous true\n"
        )
        self.log = self.dir / "mosquitto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(lambda: _listening(self.port), 30, "mosquitto listens")

    def _write(self, chain: bytes, key: bytes) -> None:
        for name, data in (("chain.pem", chain), ("key.pem", key)):
            tmp = self.dir / f".{name}.tmp"
            tmp.write_bytes(data)
            try:
                shutil.chown(tmp, group="mosquitto")
                tmp.chmod(0o640)
            except (LookupError, PermissionError):
                tmp.chmod(0o644)  # a throwaway test key; mosquitto runs as this user then
            tmp.rename(self.dir / name)

    def serve(self, chain: bytes, key: bytes, verify_with: Path) -> float:
        """Serve another chain; returns once a handshake anchors at `verify_with` (monotonic)."""
        self._write(chain, key)
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.verifies(verify_with), 30, f"mosquitto serves the chain of {verify_with.name}")
        return time.monotonic()

    def verifies(self, cafile: Path) -> bool:
        r = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{self.port}",
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-verify_return_error",
                "-CAfile",
                str(cafile),
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return r.returncode == 0

    def close(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus:
    """Debian's prometheus server: every device's node_exporter every second, docs/alerts.yml
    evaluated every second."""

    def __init__(self, work: Path, targets: dict[str, int]) -> None:
        self.dir = work / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        lines = [
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}",
            f"rule_files: [{json.dumps(str(ALERTS))}]",
            "scrape_configs:",
            "  - job_name: node",
            "    static_configs:",
        ]
        for name, port in targets.items():
            # The device's name is its instance label, as a fleet's inventory would name it.
            lines.append(f"      - targets: ['127.0.0.1:{port}']\n        labels: {{instance: {name}}}")
        conf = self.dir / "prometheus.yml"
        conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={conf}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, 120, "prometheus is ready", interval=0.5)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The single value of a query, or None when the vector is empty."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> dict[str, str]:
        """instance -> state (pending or firing) of one alert."""
        return {
            a["metric"].get("instance", ""): a["metric"]["alertstate"]
            for a in self.query(f'ALERTS{{alertname="{name}"}}')
        }

    def close(self) -> None:
        _stop(self.proc)


class Ansible:
    """ansible-playbook (Debian's ansible-core) with an inventory of the devices' sshd ports."""

    def __init__(self, work: Path, hosts: dict[str, int], key: Path, forks: int) -> None:
        self.dir = work / "ansible"
        self.dir.mkdir()
        inventory = self.dir / "inventory.ini"
        inventory.write_text(
            "[edge_devices]\n"
            + "".join(
                f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root\n"
                for name, port in hosts.items()
            )
        )
        config = self.dir / "ansible.cfg"
        config.write_text(
            "[defaults]\n"
            f"inventory = {inventory}\nprivate_key_file = {key}\nforks = {forks}\n"
            "host_key_checking = False\ninterpreter_python = /usr/bin/python3\n"
            "retry_files_enabled = False\ntimeout = 60\n"
            "[ssh_connection]\npipelining = True\n"
            # One ssh connection per device for the whole run; the devices' host keys are
            # throwaway ones from the cached root.
            "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=no -o LogLevel=ERROR\n"
        )
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.dir),
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_HOME": str(self.dir / "home"),
            "ANSIBLE_NOCOLOR": "1",
            "LANG": "C.UTF-8",
        }

    def start(self, *extra_vars: str, limit: str | None = None) -> subprocess.Popen[str]:
        argv = ["ansible-playbook", str(PLAYBOOK)]
        for var in extra_vars:
            argv += ["-e", var]
        if limit:
            argv += ["--limit", limit]
        return subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.dir,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
