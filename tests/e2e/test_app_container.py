"""Apps in a container trust the gateway through the bind-mounted bundle directory, and a root
dropped on the host reaches a container that is already running, without a restart.

The runtime is Debian's podman; the image is imported from the cached debootstrap root that
the booted e2e test uses (`tar | podman import`), so it holds Debian 12's openssl and nodejs.
The gateway is `openssl s_server` on the host's 127.0.0.1, and the containers share the host's
network. The host side is a temporary trust tree (`support.tree.make_tree`) whose bundles.dir is
the mounted directory, changed only by a real `edge-certd sync`: never this machine's store.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.certs import CA
from support.loopback import free_port
from support.nspawn import cache_key, unavailable
from support.tree import Tree, make_tree

from edge_certd.cli.containers import MOUNT_POINT

pytestmark = pytest.mark.e2e


IMAGE = f"localhost/edge-certd-e2e:{cache_key()}"
# Quirks of hosts like CI's, harmless elsewhere: crun refuses a cgroup v1/v2 hybrid host ("cgroups in
# hybrid mode not supported"), runc does not; and inside an unprivileged outer container the
# default RLIMIT_NOFILE/NPROC are above the hard limits, so setrlimit fails unless lowered.
PODMAN_RUN = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")

# Node's error codes for a chain it cannot anchor (a leaf issued directly by the root gives
# the first, one behind an intermediate the second).
UNTRUSTED = {"UNABLE_TO_VERIFY_LEAF_SIGNATURE", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"}
NODE_CONNECT = """
const tls = require('tls');
const s = tls.connect({host: '127.0.0.1', port: +process.argv[1], servername: 'localhost'}, () => {
  console.log('authorized'); s.end(); process.exit(0);
});
s.on('error', (e) => { console.log(e.code || e.message); process.exit(1); });
"""


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def image(cached_root: Callable[..., Path]) -> str:
    root = cached_root()  # first: skips (or fails in CI) where no container can boot
    if not shutil.which("podman") or not shutil.which("runc"):
        unavailable("podman and runc are not installed (tests/run-all installs them)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", IMAGE], stdin=tar.stdout, capture_output=True, text=True, timeout=600
        )
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    return IMAGE


@contextlib.contextmanager
def gateway(tmp_path: Path, root: CA) -> Iterator[int]:
    """`openssl s_server` on 127.0.0.1 presenting a leaf for localhost issued under `root`."""
    cert, key = root.issue_server("localhost", ["localhost", "127.0.0.1"]).write(tmp_path / "gateway")
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key), "-www"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextlib.contextmanager
def running(image: str, run_args: list[str]) -> Iterator[str]:
    """A container running `sleep infinity` on the host's network; removed on exit."""
    name = f"edge-certd-app-{uuid.uuid4().hex[:10]}"
    podman(
        "run", "-d", "--name", name, "--network", "host", *PODMAN_RUN, *run_args, image, "sleep", "infinity"
    )
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def s_client(name: str, port: int, *ca: str) -> subprocess.CompletedProcess[str]:
    """openssl s_client inside the container: verified, or a failed handshake (exit 1)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    cmd += [*ca, "-verify_hostname", "localhost", "-verify_return_error", "-brief"]
    return podman("exec", name, "sh", "-c", f"{shlex.join(cmd)} </dev/null 2>&1", check=False)


def node(name: str, port: int) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, "node", "-e", NODE_CONNECT, str(port), check=False)


def started(name: str) -> str:
    return podman("inspect", "-f", "{{.State.Pid}} {{.State.StartedAt}}", name).stdout.strip()


def sync(tree: Tree) -> None:
    r = tree.cli("sync")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_root_dropped_on_the_host_reaches_a_running_container(image: str, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "device")
    sync(tree)  # no root yet: the bundles exist, without the gateway's root
    root = CA.root("Container Gateway Root")
    args = tree.cli("container-args", "--format", "podman")
    assert args.returncode == 0, args.stderr
    run_args = shlex.split(args.stdout)
    file_mount = ["--mount", f"type=bind,src={tree.edge_roots},dst=/edge-roots.pem,readonly"]

    with (
        gateway(tmp_path, root) as port,
        running(image, run_args) as app,
        running(image, file_mount) as stale,
    ):
        before = started(app)
        # Without the root, both clients in the container refuse the gateway.
        r = s_client(app, port)
        assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout, r.stdout
        r = node(app, port)
        assert r.returncode == 1 and r.stdout.strip() in UNTRUSTED, r.stdout + r.stderr

        (tree.drop / "gateway-root.pem").write_bytes(root.cert_pem)
        sync(tree)

        # The same container, never restarted, now verifies through the mounted bundle.
        r = s_client(app, port)  # SSL_CERT_FILE -> ca-bundle.pem, from container-args
        assert r.returncode == 0 and "Verification: OK" in r.stdout, r.stdout
        r = s_client(app, port, "-CAfile", f"{MOUNT_POINT}/edge-roots.pem")
        assert r.returncode == 0 and "Verification: OK" in r.stdout, r.stdout
        r = node(app, port)  # NODE_EXTRA_CA_CERTS -> edge-roots.pem
        assert r.returncode == 0 and "authorized" in r.stdout, r.stdout + r.stderr
        assert started(app) == before

        # A file mount keeps the inode it was given: the rename never reaches it.
        seen = podman("exec", stale, "cat", "/edge-roots.pem").stdout
        assert "BEGIN CERTIFICATE" not in seen
        assert "BEGIN CERTIFICATE" in tree.edge_roots.read_text()

        # A container without the mount and variables still refuses the gateway.
        with running(image, []) as bare:
            r = s_client(bare, port)
            assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout, r.stdout
            r = node(bare, port)
            assert r.returncode == 1 and r.stdout.strip() in UNTRUSTED, r.stdout + r.stderr


def test_container_args_run_as_printed_through_a_real_shell(image: str, tmp_path: Path) -> None:
    """The line is meant for `eval "podman run $(edge-certd container-args) IMAGE"`."""
    tree = make_tree(tmp_path / "device")
    sync(tree)
    cli = f"{shlex.quote(sys.executable)} -m edge_certd --config {shlex.quote(str(tree.config_path))}"
    script = (
        f'eval "podman run --rm --network host {shlex.join(PODMAN_RUN)} '
        f"$({cli} container-args --format podman) {image} "
        "sh -c 'echo \\$NODE_EXTRA_CA_CERTS; test -f \\$SSL_CERT_FILE && echo present'\""
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"{MOUNT_POINT}/edge-roots.pem", "present"]
