"""Checking the gateway's chain against one trust store at a time: the side effects.

The handshake happens once, with verification off (`net.probe_tls`); the chain it
collected is then verified here against each store, by `openssl verify` (`runner`) with
only that store's anchors: the ones it could use for this chain (`pick`), the whole file
when it is not plain PEM. The stores' checks run at once, under one deadline, and stores
that hand OpenSSL the same anchors share one run.

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
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from edge_certd.core.pem import der_to_pem
from edge_certd.core.text import printable
from edge_certd.core.truststore import certificates
from edge_certd.diagnose.verify import pick, runner
from edge_certd.diagnose.verify.model import StoreCheck, TrustStore
from edge_certd.diagnose.verify.namehash import openssl_name_hash
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
# Links to certificates of one name hash (`<hash>.0`, `.1`, …) read before OpenSSL is
# left to search the directory itself.
_MAX_LINKS = 8


def find_openssl() -> str | None:
    return shutil.which("openssl") or next((p for p in _OPENSSL_CANDIDATES if os.path.exists(p)), None)


def check_store(store: TrustStore, chain_der: Sequence[bytes], openssl: str | None) -> StoreCheck:
    """Verify `chain_der` (leaf first, as presented) against `store` alone.

    Never raises: a store that cannot be read, or an openssl that cannot run, comes back
    as `problem`.
    """
    return check_stores([store], chain_der, openssl)[0]


# A store's certificates, or None and why they cannot be read.
_Read = tuple[pick.Store | None, str | None]


class Reading:
    """Each store's certificates, read once. A check needs them only once the chain is in,
    so `check` reads them while the gateway works out its answer to the ClientHello, with a
    spare `openssl verify` starting beside it (`runner.Spare`) when given `openssl` (the
    path the check's runs use)."""

    def __init__(self, stores: Sequence[TrustStore], openssl: str | None = None) -> None:
        self.stores = tuple(stores)
        self.keys = pick.Keys()
        self.spare: runner.Spare | None = None
        self.openssl = openssl
        self._read: list[_Read] | None = None

    def __call__(self) -> list[_Read]:
        if self._read is None:
            if self.openssl is not None and self.stores:
                self.spare = runner.Spare(self.openssl)
            self._read = [_read_store(store, self.keys) for store in self.stores]
        return self._read

    def __enter__(self) -> Reading:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.spare is not None:
            self.spare.close()


def check_stores(
    stores: Sequence[TrustStore],
    chain_der: Sequence[bytes],
    openssl: str | None,
    *,
    reading: Reading | None = None,
) -> list[StoreCheck]:
    """`check_store` for each of `stores`, their `openssl verify` runs side by side, all
    within one `_OPENSSL_TIMEOUT`. Never raises."""
    if reading is None or reading.stores != tuple(stores):
        reading = Reading(stores)
    read = reading()
    runs = _Runs()
    try:
        with runner.MemoryFiles() as memory:
            chain = _Chain(chain_der, memory)
            started = [
                _start(store, got, chain, openssl, memory, reading, runs)
                for store, got in zip(stores, read, strict=True)
            ]
            return [item if isinstance(item, StoreCheck) else item.finish(chain.deadline) for item in started]
    except runner.NoMemoryFiles as exc:
        return [StoreCheck(problem=f"cannot be checked: {exc}") for _ in stores]
    finally:
        for run in runs.values():  # none outlives the check, whatever happened
            run.stop()


class _Chain:
    """The presented chain as `openssl verify` reads it, and the one deadline of all runs."""

    def __init__(self, chain_der: Sequence[bytes], memory: runner.MemoryFiles) -> None:
        self.der = chain_der
        self.leaf_pem = _pems(chain_der[:1])
        self.untrusted_pem = _pems(chain_der[1:_MAX_CHAIN])
        self.leaf = memory.file("leaf.pem", self.leaf_pem)
        self.untrusted = memory.file("untrusted.pem", self.untrusted_pem) if self.untrusted_pem else None
        self.deadline = time.monotonic() + _OPENSSL_TIMEOUT


@dataclass(frozen=True, kw_only=True)
class _Running:
    """One store's check, started; what its result needs besides OpenSSL's word."""

    run: runner.Run
    anchors: int
    anchor: str | None
    holds_issuer: bool
    anchor_sha256: str | None

    def finish(self, deadline: float) -> StoreCheck:
        outcome = self.run.outcome(deadline)
        if outcome is None:
            timeout = f"Command {self.run.proc.args!r} timed out after {_OPENSSL_TIMEOUT} seconds"
            return StoreCheck(
                anchors=self.anchors,
                problem=f"cannot be checked: openssl verify did not run ({timeout})",
                holds_issuer=self.holds_issuer,
            )
        verdict = _verdict(*outcome)
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


_Runs = dict[tuple[bytes | str, str | None], runner.Run]


def _start(
    store: TrustStore,
    read: _Read,
    chain: _Chain,
    openssl: str | None,
    memory: runner.MemoryFiles,
    reading: Reading,
    runs: _Runs,
) -> StoreCheck | _Running:
    found, problem = read
    if found is None:
        return StoreCheck(problem=problem)
    plain = [e for e in found.entries if e.plain]
    if not plain:
        return StoreCheck(problem="holds no certificate")
    anchor, holds_issuer, anchor_sha256 = _issuer_in(plain, chain.der)
    if openssl is None:
        problem = "cannot be checked: the openssl command is not installed (apt install openssl)"
        return StoreCheck(anchors=len(plain), problem=problem, anchor=anchor, holds_issuer=holds_issuer)
    chosen = pick.needed(found, chain.der[:_MAX_CHAIN], reading.keys)
    capath = store.directory if store.directory and os.path.isdir(store.directory) else None
    content: bytes | None = None
    cafile = store.path  # not plain: the very file the runtime reads, parsed by OpenSSL
    if chosen is not None or store.kind != "pem":
        # Only what could be used; an unused one when none could, so OpenSSL loads a file.
        entries = found.entries if chosen is None else chosen or found.entries[:1]
        content = b"".join(e.pem for e in entries)
        if (
            capath
            and chosen is not None
            and _directory_adds_nothing(capath, entries, chain.der, reading.keys)
        ):
            capath = None  # so it can share the run of a store that picked the same anchors
    # Stores that hand OpenSSL the same anchors (and directory) get the same verdict: the
    # system bundle and ca-bundle.pem, say, both holding the one gateway root it needs.
    key = (content or cafile, capath)
    if key not in runs:
        try:
            runs[key] = _run(openssl, content, cafile, capath, chain, memory, reading.spare)
        except OSError as exc:
            return StoreCheck(
                anchors=len(plain),
                problem=f"cannot be checked: openssl verify did not run ({exc})",
                holds_issuer=holds_issuer,
            )
    return _Running(
        run=runs[key],
        anchors=len(plain),
        anchor=anchor,
        holds_issuer=holds_issuer,
        anchor_sha256=anchor_sha256,
    )


def _run(
    openssl: str,
    content: bytes | None,
    cafile: str,
    capath: str | None,
    chain: _Chain,
    memory: runner.MemoryFiles,
    spare: runner.Spare | None,
) -> runner.Run:
    """One `openssl verify` of the chain: the spare when it fits, else a new one."""
    if (
        content is not None
        and spare is not None
        and spare.takes(openssl, capath, chain.untrusted is not None)
    ):
        return spare.feed(content, chain.untrusted_pem, chain.leaf_pem, chain.deadline)
    handed = [chain.leaf] if chain.untrusted is None else [chain.leaf, chain.untrusted]
    if content is not None:
        handed.append(memory.file("anchors.pem", content))
        cafile = runner.named(handed[-1])
    argv = [openssl, *runner.ARGV, "-CAfile", cafile]
    argv += ["-CApath", capath] if capath else ["-no-CApath"]
    if chain.untrusted is not None:
        argv += ["-untrusted", runner.named(chain.untrusted)]
    argv.append(runner.named(chain.leaf))
    return runner.start(argv, memory, handed)


def _directory_adds_nothing(
    directory: str, handed: Sequence[pick.Entry], chain_der: Sequence[bytes], keys: pick.Keys
) -> bool:
    """Whether every certificate OpenSSL could find in the hashed `directory` for this chain
    is one it is handed anyway, so that -CApath cannot change its verdict: a copy of a
    certificate the store holds is not added again (x509_store_add), and the handed copy,
    loaded first, is the one used. OpenSSL looks a directory up by the names of the chain
    it builds: the presented certificates' subjects and issuers and the anchors'. Any
    doubt (a name not hashed here, a file not plain PEM, a link too many) is a no."""
    have = {entry.der for entry in handed}
    names: set[bytes] = set()
    for cert_der in [*chain_der[:_MAX_CHAIN], *have]:
        pair = pick.names_of(cert_der)
        if pair is None:
            return False
        names.update(pair)
    for name in names:
        hashed = openssl_name_hash(name)
        if hashed is None:
            return False
        for suffix in range(_MAX_LINKS):
            try:
                data = read_bytes(os.path.join(directory, f"{hashed}.{suffix}"))
            except OSError:
                return False
            if data is None:  # OpenSSL stops at the first missing suffix too
                break
            linked = pick.read_pem_store(data, keys)
            if not linked.clean or not linked.entries or any(e.der not in have for e in linked.entries):
                return False
        else:
            return False
    return True


def _read_store(store: TrustStore, keys: pick.Keys) -> _Read:
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


def _pems(ders: Sequence[bytes]) -> bytes:
    return b"".join(der_to_pem(der) for der in ders)
