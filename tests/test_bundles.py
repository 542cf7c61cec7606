"""Each bundle proven by a real TLS handshake against a loopback server whose chain leads
to a dropped root: Node, Python ssl, openssl s_client, and keytool for Java."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from support.certs import CA
from support.tlsserver import tls_server
from support.tree import Tree, require_tool

NODE_CLIENT = """
const tls = require('tls');
const s = tls.connect({host: '127.0.0.1', port: +process.argv[1], servername: 'localhost'}, () => {
  console.log('authorized=' + s.authorized); s.end(); process.exit(0);
});
s.on('error', e => { console.log('error=' + e.code); process.exit(1); });
"""


def env_from(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["sh", "-c", f"set -a; . '{path}'; set +a; env -0"], capture_output=True, check=True, env={}
    ).stdout
    pairs = (item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in ("PWD", "SHLVL", "_")}


@pytest.fixture
def synced(tree: Tree) -> tuple[Tree, CA]:
    root = CA.root("Contoso Gateway Root")
    tree.drop.mkdir(parents=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    assert tree.cli("sync").returncode == 0
    return tree, root


def test_node_trusts_the_gateway_with_the_env_file_and_not_without(
    synced: tuple[Tree, CA], tmp_path: Path
) -> None:
    node = require_tool("node")
    tree, root = synced
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    with tls_server(tmp_path / "srv", root) as port:
        # --use-bundled-ca: Debian's nodejs would read the system store; official builds don't.
        argv = [node, "--use-bundled-ca", "-e", NODE_CLIENT, str(port)]
        with_env = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env={**base, **env_from(tree.env_file)}
        )
        without = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=base)
    assert "authorized=true" in with_env.stdout, with_env.stdout + with_env.stderr
    assert without.returncode == 1 and "UNABLE_TO_GET_ISSUER_CERT" in without.stdout


def test_node_use_system_ca_trusts_the_gateway_through_the_system_bundle(
    synced: tuple[Tree, CA], tmp_path: Path
) -> None:
    """Node >= 23.9 on Linux: --use-system-ca reads OpenSSL's default file, which SSL_CERT_FILE
    names. The device's store is the tree's system bundle here; without it, the same flag fails."""
    node = require_tool("node")
    help_text = subprocess.run([node, "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--use-system-ca" not in help_text:
        pytest.skip("this Node has no --use-system-ca (added in v23.8, on Linux in v23.9)")
    tree, root = synced
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SSL_CERT_DIR": str(tmp_path / "empty")}
    with tls_server(tmp_path / "srv", root) as port:
        argv = [node, "--use-system-ca", "-e", NODE_CLIENT, str(port)]
        trusted = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            env={**base, "SSL_CERT_FILE": str(tree.system_bundle)},
        )
        stranger = tmp_path / "stranger.pem"
        stranger.write_bytes(CA.root("Stranger").cert_pem)
        refused = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env={**base, "SSL_CERT_FILE": str(stranger)}
        )
    assert "authorized=true" in trusted.stdout, trusted.stdout + trusted.stderr
    assert refused.returncode == 1 and "UNABLE_TO_GET_ISSUER_CERT" in refused.stdout


def test_python_ssl_trusts_the_gateway_with_ca_bundle(synced: tuple[Tree, CA], tmp_path: Path) -> None:
    tree, root = synced
    with tls_server(tmp_path / "srv", root) as port:
        context = ssl.create_default_context(cafile=str(tree.bundles / "ca-bundle.pem"))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(6) == b"hello\n"
        stranger = CA.root("Stranger")
        with (
            tls_server(tmp_path / "srv2", stranger) as bad_port,
            socket.create_connection(("127.0.0.1", bad_port)) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname="localhost")


def test_openssl_s_client_verifies_with_edge_roots(synced: tuple[Tree, CA], tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    tree, root = synced
    with tls_server(tmp_path / "srv", root) as port:
        out = subprocess.run(
            [
                openssl,
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                "-CAfile",
                str(tree.edge_roots),
                "-verify_return_error",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("mode", ["auto", "jks"])
def test_keytool_lists_java_entries_as_trusted_cert_entries(tree: Tree, mode: str) -> None:
    keytool = require_tool("keytool")
    tree.write_config(bundles__java=mode)
    root = CA.root("Java Root")
    tree.drop.mkdir(parents=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    assert tree.cli("sync").returncode == 0
    (store,) = [p for p in tree.bundles.iterdir() if p.name.startswith("java-truststore")]
    listing = subprocess.run(
        [keytool, "-list", "-keystore", str(store), "-storepass", "changeit"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert listing.count("trustedCertEntry") == 4, listing  # ours + the tree's 3 Mozilla roots
    import hashlib

    assert f"edge-certd-{hashlib.sha256(root.der).hexdigest()[:16]}" in listing
    env = tree.env_file.read_text()
    assert f"EDGE_CERTD_JAVA_TRUSTSTORE='{store}'" in env
    before = store.stat().st_mtime_ns
    assert tree.cli("sync").returncode == 0
    assert store.stat().st_mtime_ns == before  # unchanged set: not rewritten
