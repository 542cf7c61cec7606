"""Checking the gateway's chain against one trust store at a time: the side effects.

The handshake happens once, with verification off (`net.probe_tls`); the chain it
collected is then verified here against each store, in a fresh `openssl verify` with
only that store's anchors: the ones it could use for this chain (`pick`), the whole file
when it is not plain PEM. The stores' checks run at once, under one deadline.

`openssl verify` because it is the same chain builder the runtimes on a Debian device
use (Python `ssl`, curl, mosquitto, the Azure IoT C SDK, Node.js link OpenSSL), so its
verdict and its words are theirs, on Debian 12's cryptography 38 and on the newest PyPI
release alike. cryptography's own verifier (42 and later) applies a stricter Web PKI
profile than OpenSSL does, so it could refuse a chain every runtime on the device
accepts. `openssl` is always there where `update-ca-certificates` works: Debian's ca-
certificates package depends on it.

`openssl verify(1ssl)`: without -no-CApath and -no-CAstore it also loads OpenSSL's
default directory and store, which would let the machine's own roots leak into the
check of edge-roots.pem, the one file the Azure IoT SDKs trust.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from edge_certd.core.pem import der_to_pem
from edge_certd.core.text import printable
from edge_certd.core.truststore import certificates
from edge_certd.diagnose.verify import pick
from edge_certd.diagnose.verify.model import StoreCheck, TrustStore
from edge_certd.store.fsutil import read_bytes

__all__ = ["check_store", "check_stores", "find_openssl"]

# Where Debian puts the binary, for a PATH without /usr/bin (a systemd unit's is fine).
_OPENSSL_CANDIDATES = ("/usr/bin/openssl",)
# Verifying one chain takes milliseconds; this only bounds a wedged process.
_OPENSSL_TIMEOUT = 20.0
# A gateway sends leaf, edge CA and maybe an intermediate or two; more is not a chain
# any client would build from, and each one is a file openssl parses.
_MAX_CHAIN = 16
# openssl verify's callback (apps/verify.c) prints each error it meets like this.
_ERROR_LINE = re.compile(r"error (\d+) at (\d+) depth lookup: ?(.*)")
# openssl verify says a line or two; more is read no further.
_MAX_OUTPUT = 64 * 1024


def find_openssl() -> str | None:
    return shutil.which("openssl") or next((p for p in _OPENSSL_CANDIDATES if os.path.exists(p)), None)


def check_store(store: TrustStore, chain_der: Sequence[bytes], openssl: str | None) -> StoreCheck:
    """Verify `chain_der` (leaf first, as presented) against `store` alone.

    Never raises: a store that cannot be read, or an openssl that cannot run, comes back
    as `problem`.
    """
    return check_stores([store], chain_der, openssl)[0]


def check_stores(
    stores: Sequence[TrustStore], chain_der: Sequence[bytes], openssl: str | None
) -> list[StoreCheck]:
    """`check_store` for each of `stores`, their `openssl verify` runs side by side, all
    within one `_OPENSSL_TIMEOUT`. Never raises."""
    with tempfile.TemporaryDirectory(prefix="edge-certd-verify-") as work:
        leaf = os.path.join(work, "leaf.pem")
        _write(leaf, chain_der[:1])
        untrusted = None
        if len(chain_der) > 1:
            untrusted = os.path.join(work, "untrusted.pem")
            _write(untrusted, chain_der[1:_MAX_CHAIN])
        keys, runs = pick.Keys(), _Runs()
        try:
            started = [
                _start(store, chain_der, openssl, os.path.join(work, str(i)), leaf, untrusted, keys, runs)
                for i, store in enumerate(stores)
            ]
            deadline = time.monotonic() + _OPENSSL_TIMEOUT
            return [item if isinstance(item, StoreCheck) else item.finish(deadline) for item in started]
        finally:
            for run in runs.values():  # none outlives the check, whatever happened
                run.stop()


class _Run:
    """One `openssl verify` process; its verdict once it has ended."""

    def __init__(self, proc: subprocess.Popen[bytes], out: str, err: str) -> None:
        self.proc, self.out, self.err = proc, out, err
        self._verdict: StoreCheck | None = None

    def verdict(self, deadline: float) -> StoreCheck:
        if self._verdict is None:
            if _wait(self.proc, deadline):
                self._verdict = _verdict(self.proc.returncode, _head(self.out) + _head(self.err))
            else:
                self.proc.kill()
                self.proc.wait()
                timeout = f"Command {self.proc.args!r} timed out after {_OPENSSL_TIMEOUT} seconds"
                self._verdict = StoreCheck(
                    problem=f"cannot be checked: openssl verify did not run ({timeout})"
                )
        return self._verdict

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True, kw_only=True)
class _Running:
    """One store's check, started; what its result needs besides OpenSSL's word."""

    run: _Run
    anchors: int
    anchor: str | None
    holds_issuer: bool
    anchor_sha256: str | None

    def finish(self, deadline: float) -> StoreCheck:
        verdict = self.run.verdict(deadline)
        return StoreCheck(
            anchors=self.anchors,
            problem=verdict.problem,
            verified=verdict.verified,
            error_code=verdict.error_code,
            error_text=verdict.error_text,
            anchor=self.anchor if verdict.verified else None,
            anchor_sha256=self.anchor_sha256 if verdict.verified else None,
            holds_issuer=self.holds_issuer,
        )


_Runs = dict[tuple[bytes | str, str | None], _Run]


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether `proc` ended by `deadline`. A pidfd wakes at its exit; Popen.wait(timeout)
    polls with sleeps of up to 50 ms, more than a whole check takes."""
    remaining = max(0.0, deadline - time.monotonic())
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3, or not Linux
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], remaining)
    finally:
        os.close(pidfd)
    if not ready:
        return False
    proc.wait()
    return True


def _start(
    store: TrustStore,
    chain_der: Sequence[bytes],
    openssl: str | None,
    work: str,
    leaf: str,
    untrusted: str | None,
    keys: pick.Keys,
    runs: _Runs,
) -> StoreCheck | _Running:
    read, problem = _read_store(store, keys)
    if read is None:
        return StoreCheck(problem=problem)
    plain = [e for e in read.entries if e.plain]
    if not plain:
        return StoreCheck(problem="holds no certificate")
    anchor, holds_issuer, anchor_sha256 = _issuer_in(plain, chain_der)
    if openssl is None:
        problem = "cannot be checked: the openssl command is not installed (apt install openssl)"
        return StoreCheck(anchors=len(plain), problem=problem, anchor=anchor, holds_issuer=holds_issuer)
    argv = [openssl, "verify", "-purpose", "sslserver", "-no-CAstore"]
    chosen = pick.needed(read, chain_der[:_MAX_CHAIN], keys)
    capath = store.directory if store.directory and os.path.isdir(store.directory) else None
    content: bytes | None = None
    if chosen is None and store.kind == "pem":
        cafile = store.path  # not plain: the very file the runtime reads, parsed by OpenSSL
    else:
        # Only what could be used; an unused one when none could, so OpenSSL loads a file.
        entries = read.entries if chosen is None else chosen or read.entries[:1]
        content = b"".join(e.pem for e in entries)
    # Stores that hand OpenSSL the same anchors (and directory) get the same verdict: the
    # system bundle and ca-bundle.pem, say, both holding the one gateway root it needs.
    run = runs.get((content or cafile, capath))
    if run is None:
        if content is not None:
            cafile = f"{work}-anchors.pem"
            with open(cafile, "wb") as handle:
                handle.write(content)
        argv += ["-CAfile", cafile]
        argv += ["-CApath", capath] if capath else ["-no-CApath"]
        if untrusted is not None:
            argv += ["-untrusted", untrusted]
        argv.append(leaf)
        out, err = f"{work}-out", f"{work}-err"
        try:
            # Files, not pipes: several run at once and none may block on a full pipe.
            with open(out, "wb") as out_file, open(err, "wb") as err_file:
                proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return StoreCheck(
                anchors=len(plain),
                problem=f"cannot be checked: openssl verify did not run ({exc})",
                holds_issuer=holds_issuer,
            )
        run = runs[(content or cafile, capath)] = _Run(proc, out, err)
    return _Running(
        run=run,
        anchors=len(plain),
        anchor=anchor,
        holds_issuer=holds_issuer,
        anchor_sha256=anchor_sha256,
    )


def _read_store(store: TrustStore, keys: pick.Keys) -> tuple[pick.Store | None, str | None]:
    """The store's certificates, or (None, why) when it cannot be read."""
    try:
        data = read_bytes(store.path)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    if data is None:
        return None, "not found"
    if store.kind == "pem":
        return pick.read_pem_store(data, keys), None
    try:
        return pick.store_of_ders(certificates(data, store.kind, store.password), keys), None
    except ValueError:
        return None, "cannot be read as PKCS#12 with the configured password (bundles.java_password)"


def _issuer_in(
    plain: Sequence[pick.Entry], chain_der: Sequence[bytes]
) -> tuple[str | None, bool, str | None]:
    """The anchor named as the issuer of the chain's top (a self-signed top names
    itself), escaped for display, whether the store holds one at all, and its SHA-256.

    Names are compared by cryptography, as always; `pick.name_key` only spares parsing
    the anchors whose names cannot be equal."""
    try:
        top = x509.load_der_x509_certificate(chain_der[-1])
    except (ValueError, IndexError):
        return None, False, None
    wanted = top.issuer
    names = pick.names_of(chain_der[-1])
    key = pick.name_key(names[0]) if names else None
    for entry in plain:
        if key is not None and entry.subject is not None and entry.subject != key:
            continue
        try:
            cert = x509.load_der_x509_certificate(entry.der)
        except ValueError:
            continue
        if cert.subject == wanted:
            return printable(cert.subject.rfc4514_string()), True, hashlib.sha256(entry.der).hexdigest()
    return None, False, None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(_MAX_OUTPUT)
    except OSError:
        return b""


def _verdict(returncode: int, raw: bytes) -> StoreCheck:
    output = raw.decode("utf-8", "replace")
    if returncode == 0:
        return StoreCheck(verified=True)
    for line in output.splitlines():
        match = _ERROR_LINE.search(line)
        if match:
            return StoreCheck(error_code=int(match[1]), error_text=printable(match[3].strip(), 200))
    if "Error loading file" in output:
        return StoreCheck(problem="OpenSSL could not load a certificate from it")
    tail = printable(" ".join(output.split())[-200:], 200)
    return StoreCheck(problem=f"cannot be checked: openssl verify exited with {returncode}: {tail}")


def _write(path: str, ders: Sequence[bytes]) -> None:
    with open(path, "wb") as handle:
        handle.write(b"".join(der_to_pem(der) for der in ders))
