"""Checking the gateway's chain against one trust store at a time: the side effects.

The handshake happens once, with verification off (`net.probe_tls`); the chain it
collected is then verified here against each store, in a fresh `openssl verify` with
only that store's anchors. `openssl verify` because it is the same chain builder the
runtimes on a Debian device use (Python `ssl`, curl, mosquitto, the Azure IoT C SDK,
Node.js link OpenSSL), so its verdict and its words are theirs, on Debian 12's
cryptography 38 and on the newest PyPI release alike. cryptography's own verifier
(42 and later) applies a stricter Web PKI profile than OpenSSL does, so it could
refuse a chain every runtime on the device accepts. `openssl` is always there where
`update-ca-certificates` works: Debian's ca-certificates package depends on it.

`openssl verify(1ssl)`: without -no-CApath and -no-CAstore it also loads OpenSSL's
default directory and store, which would let the machine's own roots leak into the
check of edge-roots.pem, the one file the Azure IoT SDKs trust.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence

from cryptography import x509

from edge_certd.core.text import printable
from edge_certd.core.truststore import certificates
from edge_certd.diagnose.verify.model import StoreCheck, TrustStore
from edge_certd.store.fsutil import read_bytes

__all__ = ["check_store", "find_openssl"]

# Where Debian puts the binary, for a PATH without /usr/bin (a systemd unit's is fine).
_OPENSSL_CANDIDATES = ("/usr/bin/openssl",)
# Verifying one chain takes milliseconds; this only bounds a wedged process.
_OPENSSL_TIMEOUT = 20.0
# A gateway sends leaf, edge CA and maybe an intermediate or two; more is not a chain
# any client would build from, and each one is a file openssl parses.
_MAX_CHAIN = 16
# openssl verify's callback (apps/verify.c) prints each error it meets like this.
_ERROR_LINE = re.compile(r"error (\d+) at (\d+) depth lookup: ?(.*)")


def find_openssl() -> str | None:
    return shutil.which("openssl") or next((p for p in _OPENSSL_CANDIDATES if os.path.exists(p)), None)


def check_store(store: TrustStore, chain_der: Sequence[bytes], openssl: str | None) -> StoreCheck:
    """Verify `chain_der` (leaf first, as presented) against `store` alone.

    Never raises: a store that cannot be read, or an openssl that cannot run, comes back
    as `problem`.
    """
    anchors, problem = _read_anchors(store)
    if problem is not None:
        return StoreCheck(problem=problem)
    if not anchors:
        return StoreCheck(problem="holds no certificate")
    anchor, holds_issuer, anchor_sha256 = _issuer_in(anchors, chain_der)
    if openssl is None:
        problem = "cannot be checked: the openssl command is not installed (apt install openssl)"
        return StoreCheck(anchors=len(anchors), problem=problem, anchor=anchor, holds_issuer=holds_issuer)
    verdict = _openssl_verify(openssl, store, anchors, chain_der)
    return StoreCheck(
        anchors=len(anchors),
        problem=verdict.problem,
        verified=verdict.verified,
        error_code=verdict.error_code,
        error_text=verdict.error_text,
        anchor=anchor if verdict.verified else None,
        anchor_sha256=anchor_sha256 if verdict.verified else None,
        holds_issuer=holds_issuer,
    )


def _read_anchors(store: TrustStore) -> tuple[list[bytes], str | None]:
    """The store's certificates as DER, or (_, why) when it cannot be read."""
    try:
        data = read_bytes(store.path)
    except OSError as exc:
        return [], f"cannot be read: {exc.strerror or exc}"
    if data is None:
        return [], "not found"
    try:
        return certificates(data, store.kind, store.password), None
    except ValueError:
        return [], "cannot be read as PKCS#12 with the configured password (bundles.java_password)"


def _issuer_in(anchors: Sequence[bytes], chain_der: Sequence[bytes]) -> tuple[str | None, bool, str | None]:
    """The anchor named as the issuer of the chain's top (a self-signed top names
    itself), escaped for display, whether the store holds one at all, and its SHA-256."""
    try:
        top = x509.load_der_x509_certificate(chain_der[-1])
    except (ValueError, IndexError):
        return None, False, None
    wanted = top.issuer
    for der in anchors:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        if cert.subject == wanted:
            return printable(cert.subject.rfc4514_string()), True, hashlib.sha256(der).hexdigest()
    return None, False, None


def _openssl_verify(
    openssl: str, store: TrustStore, anchors: Sequence[bytes], chain_der: Sequence[bytes]
) -> StoreCheck:
    with tempfile.TemporaryDirectory(prefix="edge-certd-verify-") as work:
        leaf = os.path.join(work, "leaf.pem")
        _write(leaf, chain_der[:1])
        argv = [openssl, "verify", "-purpose", "sslserver", "-no-CAstore"]
        if store.kind == "pem":
            cafile = store.path  # the very file the runtime reads, parsed by OpenSSL
        else:
            cafile = os.path.join(work, "anchors.pem")
            _write(cafile, anchors)
        argv += ["-CAfile", cafile]
        if store.directory and os.path.isdir(store.directory):
            argv += ["-CApath", store.directory]
        else:
            argv.append("-no-CApath")
        if len(chain_der) > 1:
            untrusted = os.path.join(work, "untrusted.pem")
            _write(untrusted, chain_der[1:_MAX_CHAIN])
            argv += ["-untrusted", untrusted]
        argv.append(leaf)
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                timeout=_OPENSSL_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return StoreCheck(problem=f"cannot be checked: openssl verify did not run ({exc})")
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if proc.returncode == 0:
        return StoreCheck(verified=True)
    for line in output.splitlines():
        match = _ERROR_LINE.search(line)
        if match:
            return StoreCheck(error_code=int(match[1]), error_text=printable(match[3].strip(), 200))
    if "Error loading file" in output:
        return StoreCheck(problem="OpenSSL could not load a certificate from it")
    tail = printable(" ".join(output.split())[-200:], 200)
    return StoreCheck(problem=f"cannot be checked: openssl verify exited with {proc.returncode}: {tail}")


def _write(path: str, ders: Sequence[bytes]) -> None:
    with open(path, "wb") as handle:
        handle.write(b"".join(ssl.DER_cert_to_PEM_cert(der).encode() for der in ders))
