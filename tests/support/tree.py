"""A temporary trust tree driven by the real update-ca-certificates (tests/conftest.py's `tree`).

The tree mirrors a device: etc/ssl/certs, usr/local/share/ca-certificates/edge-certd, a
certsconf naming a few of this machine's Mozilla roots (read-only), an empty hooks dir.
Nothing here ever points at this machine's own trust store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REAL_UPDATE = shutil.which("update-ca-certificates") or "/usr/sbin/update-ca-certificates"
MOZILLA_DIR = Path("/usr/share/ca-certificates")
IN_CI = os.environ.get("CI") == "true"


def require_tool(name: str) -> str:
    """The tool's path; outside CI a missing tool skips, in CI it fails (never a silent skip)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        message = f"{name} is not installed; .ci/run must install it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Tree:
    root: Path
    config_path: Path
    count_file: Path

    @property
    def drop(self) -> Path:
        return self.root / "var/lib/edge-certd/drop"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/edge-certd"

    @property
    def ca_dir(self) -> Path:
        return self.root / "usr/local/share/ca-certificates/edge-certd"

    @property
    def etc_certs(self) -> Path:
        return self.root / "etc/ssl/certs"

    @property
    def system_bundle(self) -> Path:
        return self.etc_certs / "ca-certificates.crt"

    @property
    def bundles(self) -> Path:
        return self.root / "var/lib/edge-certd/bundles"

    @property
    def env_file(self) -> Path:
        return self.root / "etc/edge-certd/ca.env"

    @property
    def edge_roots(self) -> Path:
        return self.bundles / "edge-roots.pem"

    def update_runs(self) -> int:
        try:
            return len(self.count_file.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def config(self) -> dict:  # type: ignore[type-arg]
        return yaml.safe_load(self.config_path.read_text())

    def write_config(self, **overrides: object) -> None:
        data = self.config()
        for dotted, value in overrides.items():
            node = data
            *parents, last = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        self.config_path.write_text(yaml.safe_dump(data))

    def load(self):  # type: ignore[no-untyped-def]
        from edge_certd.config import load_config

        return load_config(str(self.config_path))[0]

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the real console entry point in a subprocess with this interpreter."""
        full_env = {**os.environ, "EDGE_CERTD_LOG": "stderr", **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "edge_certd", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(REPO),
            check=False,
        )


def make_tree(root: Path, mozilla_count: int = 3, java: str = "off") -> Tree:
    """Lay out a device-like tree under `root` and write its config."""
    for sub in (
        "etc/ssl/certs",
        "usr/local/share/ca-certificates",
        "etc/ca-certificates/update.d",
        "var/lib/edge-certd",
        "etc/edge-certd",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = sorted(p.relative_to(MOZILLA_DIR).as_posix() for p in MOZILLA_DIR.glob("mozilla/*.crt"))[
        :mozilla_count
    ]
    (root / "ca-certificates.conf").write_text("".join(f"{n}\n" for n in names))
    count_file = root / "update-runs.log"
    wrapper = root / "update-wrapper"
    # Counts runs, then execs the real tool against this tree only.
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo run >> '{count_file}'\n"
        f"exec '{REAL_UPDATE}' --certsconf '{root}/ca-certificates.conf' "
        f"--certsdir '{MOZILLA_DIR}' --localcertsdir '{root}/usr/local/share/ca-certificates' "
        f"--etccertsdir '{root}/etc/ssl/certs' --hooksdir '{root}/etc/ca-certificates/update.d' "
        '"$@"\n'
    )
    wrapper.chmod(0o755)
    config = {
        "drop_dir": str(root / "var/lib/edge-certd/drop"),
        "keyvault_export_dirs": [],
        "state_dir": str(root / "var/lib/edge-certd"),
        "trust_store": {
            "ca_dir": str(root / "usr/local/share/ca-certificates/edge-certd"),
            "update_command": [str(wrapper)],
            "system_bundle": str(root / "etc/ssl/certs/ca-certificates.crt"),
        },
        "bundles": {
            "dir": str(root / "var/lib/edge-certd/bundles"),
            "env_file": str(root / "etc/edge-certd/ca.env"),
            "java": java,
        },
        "watch": {"settle_ms": 150},
        # Each tree's daemon listens on its own socket (never the host's /run/edge-certd);
        # short, because a Unix socket's path holds 107 bytes.
        "control_socket": os.path.join(tempfile.mkdtemp(prefix="ecc-"), "control"),
        # Inside the tree and absent, so `auto` writes no metrics: never this machine's
        # node_exporter directory. tests/test_metrics.py creates it where it needs one.
        "metrics": {"textfile_dir": str(root / "var/lib/prometheus/node-exporter")},
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tree = Tree(root, config_path, count_file)
    # Build the initial system bundle as a device would have it.
    subprocess.run([str(wrapper), "--fresh"], check=True, capture_output=True)
    count_file.unlink()
    return tree
