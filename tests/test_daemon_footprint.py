"""What the long-lived daemon keeps in memory (issue 24): neither cryptography nor libssl.

Judging runs in the judge and the gateway check in the probe unit; the daemon only sends
files, writes what the judge accepted and reads the probe's result. These tests hold that on
the real thing: a running daemon that installed and removed roots and read a probe's result,
looked at through /proc/<pid>/maps, and the import graph that makes it so.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tlsserver import tls_server
from support.tree import make_tree, require_tool
from test_grace_hold_daemon import probe

from edge_certd.core.pem import der_to_pem, iter_pem_ders

REPO = Path(__file__).resolve().parent.parent
# What cryptography (its Rust extension), the ssl module and libssl map when loaded.
HEAVY_MAPPINGS = ("_rust.abi3.so", "/cryptography/", "_ssl.cpython", "libssl.so")


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 95, 96, 1000])
def test_der_to_pem_writes_what_the_stdlib_writes(size: int) -> None:
    data = os.urandom(size)
    assert der_to_pem(data) == ssl.DER_cert_to_PEM_cert(data).encode()


def test_der_to_pem_round_trips_a_certificate() -> None:
    root = CA.root("Round Trip Root")
    assert der_to_pem(root.der) == ssl.DER_cert_to_PEM_cert(root.der).encode()
    assert list(iter_pem_ders(der_to_pem(root.der))) == [root.der]


def test_importing_the_daemon_loads_neither_cryptography_nor_ssl() -> None:
    code = (
        "import sys, edge_certd.cli, edge_certd.daemon.loop; "
        "print(' '.join(m for m in ('cryptography', 'ssl', '_ssl') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.split() == [], f"the daemon's imports load {done.stdout.split()}"


def test_without_java_auto_decides_without_loading_cryptography() -> None:
    # bundles.java: auto is the default, and most devices have no Java: deciding to write no
    # truststore must not load cryptography into the daemon.
    code = (
        "import shutil, sys; shutil.which = lambda name: None; "
        "from edge_certd.targets.java import JavaTruststore; "
        "java = JavaTruststore(mode='auto', bundle_dir='/nonexistent', system_bundle='', password='x'); "
        "print(java.store_type, 'cryptography' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.split() == ["None", "False"]


def _heavy_mappings(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in lines if any(name in line for name in HEAVY_MAPPINGS)})


def test_a_daemon_that_installed_removed_and_read_a_probe_maps_no_cryptography_or_libssl(
    tmp_path: Path,
) -> None:
    require_tool("update-ca-certificates")
    require_tool("openssl")
    root_a, root_b = CA.root("Footprint Root A"), CA.root("Footprint Root B")
    device = make_tree(tmp_path / "device")
    (device.root / "probe").mkdir()
    device.drop.mkdir(parents=True, exist_ok=True)
    (device.drop / "root-a.pem").write_bytes(root_a.cert_pem)
    with tls_server(tmp_path / "gateway", root_a) as port:
        device.write_config(
            gateway__host=f"localhost:{port}",
            gateway__timeout=5,
            gateway__result_file=f"{device.root}/probe/result.json",
        )
        with RunningDaemon(device) as daemon:
            daemon.wait_ready()
            mark = daemon.mark()
            probe(device, hashlib.sha256(root_a.der).hexdigest())
            daemon.wait_status("trusted by all stores", mark)
            mark = daemon.mark()
            (device.drop / "root-b.pem").write_bytes(root_b.cert_pem)
            daemon.wait_synced(mark)
            mark = daemon.mark()
            (device.drop / "root-b.pem").unlink()
            daemon.wait_synced(mark)
            assert _heavy_mappings(daemon.pid) == []
