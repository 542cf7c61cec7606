"""The Java truststore: the system roots plus ours, as trustedCertEntry items.

`pkcs12` is built by cryptography's serialize_java_truststore (cryptography >= 45) or,
on Debian 12's cryptography 38, by one `keytool -importkeystore` from a JKS we write
ourselves. `jks` needs neither. Aliases are `edge-certd-<sha256 prefix>` for ours and
`system-<sha256 prefix>` for the rest, stable across runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Literal

from edge_certd.core.errors import WriteError
from edge_certd.core.model import Note, TrustedCA
from edge_certd.core.pem import iter_pem_ders
from edge_certd.core.text import printable
from edge_certd.core.truststore import StoreKind, certificates, jks_truststore
from edge_certd.store.fsutil import ensure_directory, read_bytes, read_bytes_quietly, write_atomic
from edge_certd.targets.base import Change, Holding, Outcome, StoreFile

JavaStoreKind = Literal["jks", "pkcs12"]
FILE_NAMES = {"pkcs12": "java-truststore.p12", "jks": "java-truststore.jks"}
# keytool runs allowed to find the certificates it refuses (about 2 log2(n) per bad one).
_MAX_ISOLATION_RUNS = 40


class JavaTruststore:
    name = "java"

    def __init__(self, *, mode: str, bundle_dir: str, system_bundle: str, password: str) -> None:
        self.mode = mode
        self.bundle_dir = bundle_dir
        self.system_bundle = system_bundle
        self.password = password
        self.store_type, self.skip_reason = _choose(mode)

    @property
    def path(self) -> str | None:
        if self.store_type is None:
            return None
        return os.path.join(self.bundle_dir, FILE_NAMES[self.store_type])

    @property
    def digest_path(self) -> str:
        """What the last write held: a cache that lets a sync skip an unchanged rewrite
        (PKCS#12 output is salted, so bytes cannot be compared). Never used to report."""
        return os.path.join(self.bundle_dir, ".java-truststore.sha256")

    def env(self) -> tuple[tuple[str, str], ...]:
        """Variables for the env file; empty when no truststore is written."""
        if self.path is None:
            return ()
        kind = "PKCS12" if self.store_type == "pkcs12" else "JKS"
        opts = (
            f"-Djavax.net.ssl.trustStore={self.path} -Djavax.net.ssl.trustStoreType={kind} "
            f"-Djavax.net.ssl.trustStorePassword={self.password}"
        )
        return (
            ("EDGE_CERTD_JAVA_TRUSTSTORE", self.path),
            ("EDGE_CERTD_JAVA_TRUSTSTORE_TYPE", kind),
            ("EDGE_CERTD_JAVA_OPTS", opts),
        )

    def stores(self) -> tuple[StoreFile, ...]:
        if self.path is None or self.store_type is None:
            return ()
        return (
            StoreFile(
                key="java",
                title="Java truststore",
                used_by="Java started with $EDGE_CERTD_JAVA_OPTS",
                path=self.path,
                kind=self.store_type,
                password=self.password,
            ),
        )

    def holdings(self) -> tuple[Holding, ...]:
        """The fingerprints read from the truststore itself, as Java would read it."""
        if self.path is None or self.store_type is None:
            return (
                Holding(name="java truststore", location="", installed=None, skip_reason=self.skip_reason),
            )
        data = read_bytes_quietly(self.path) or b""
        return (
            Holding(
                name="java truststore",
                location=self.path,
                installed=truststore_fingerprints(data, self.store_type, self.password),
                fix="run `edge-certd sync`; it rebuilds the truststore",
            ),
        )

    def apply(self, change: Change) -> Outcome:
        """Rebuild the truststore when its set of certificates changed. Raises WriteError."""
        if self.path is None or self.store_type is None:
            note = Note(code="java_skipped", message=f"Java truststore skipped: {self.skip_reason}")
            return Outcome(changed=False, notes=(note,))
        managed = change.managed
        entries = self._entries(managed)
        ours = sorted(ca.sha256 for ca in managed)
        # PKCS#12 output is salted, so compare sets, not bytes, to write only on change.
        set_digest = hashlib.sha256(
            b"".join(der for _, der in entries) + self.password.encode() + self.store_type.encode()
        ).hexdigest()
        record = " ".join([set_digest, *ours]).encode()
        previous = read_bytes(self.digest_path) or b""
        # The record also holds the file's own hash: a truststore that something else
        # rewrote is rebuilt, not trusted to be the one we wrote.
        on_disk = read_bytes_quietly(self.path)
        current = record + b" " + hashlib.sha256(on_disk).hexdigest().encode() if on_disk else b""
        if on_disk is not None and previous.split(b"\n")[0] == current:
            # Still the same set: say again which CAs the truststore could not take.
            return Outcome(changed=False, notes=_refusal_notes(previous.split(b"\n")[1:]))
        ensure_directory(self.bundle_dir, 0o755)
        try:
            data, refused = self._serialize(entries), list[tuple[str, str]]()
        except WriteError:
            # One CA the serializer (or keytool) refuses must not keep every other CA out
            # of Java: find it, leave it out, and say so. Raises when it is not one CA.
            kept, refused = self._isolate(entries)
            data = self._serialize(kept)
        lines = [record + b" " + hashlib.sha256(data).hexdigest().encode()]
        lines += [f"{alias} {why}".encode() for alias, why in refused]
        write_atomic(self.path, data, 0o644)
        write_atomic(self.digest_path, b"\n".join(lines), 0o644)
        return Outcome(changed=True, detail=os.path.basename(self.path), notes=_refusal_notes(lines[1:]))

    def _isolate(
        self, entries: list[tuple[str, bytes]]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
        """Split the entries into those the serializer takes and those it refuses, by
        halving (a few runs of keytool for one bad CA among hundreds).

        Raises:
            WriteError: every entry is refused, or too many to tell which: the trouble is not
                a certificate (keytool missing, a full disk).
        """
        refused: list[tuple[str, str]] = []
        budget = [_MAX_ISOLATION_RUNS]

        def split(group: list[tuple[str, bytes]]) -> None:
            budget[0] -= 1
            if budget[0] < 0:
                raise WriteError(
                    self.path or "java truststore",
                    "too many certificates refused to tell which; the truststore was not rewritten",
                )
            try:
                self._serialize(group)
                return
            except WriteError as exc:
                if len(group) == 1:
                    refused.append((group[0][0], exc.reason))
                    return
            middle = len(group) // 2
            split(group[:middle])
            split(group[middle:])

        split(entries)
        if len(refused) == len(entries):
            raise WriteError(
                self.path or "java truststore", f"every certificate was refused: {refused[0][1]}"
            )
        bad = {alias for alias, _ in refused}
        return [e for e in entries if e[0] not in bad], refused

    def _entries(self, managed: Sequence[TrustedCA]) -> list[tuple[str, bytes]]:
        ours = {ca.sha256: ca.der for ca in managed}
        entries = [(f"edge-certd-{sha[:16]}", ours[sha]) for sha in sorted(ours)]
        seen = set(ours)
        for der in iter_pem_ders(read_bytes(self.system_bundle) or b""):
            sha = hashlib.sha256(der).hexdigest()
            if sha not in seen:
                seen.add(sha)
                entries.append((f"system-{sha[:16]}", der))
        return entries

    def _serialize(self, entries: list[tuple[str, bytes]]) -> bytes:
        """Raises WriteError for anything the serializer refuses."""
        try:
            return self._serialize_unchecked(entries)
        except (ValueError, TypeError) as exc:  # cryptography refusing a certificate
            raise WriteError(self.path or "java truststore", f"{type(exc).__name__}: {exc}"[:300]) from None

    def _serialize_unchecked(self, entries: list[tuple[str, bytes]]) -> bytes:
        if self.store_type == "jks":
            return jks_truststore(entries, self.password)
        if _cryptography_writes_pkcs12():
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.serialization import pkcs12

            certs = [
                pkcs12.PKCS12Certificate(x509.load_der_x509_certificate(der), alias.encode())
                for alias, der in entries
            ]
            encryption = serialization.BestAvailableEncryption(self.password.encode())
            return bytes(pkcs12.serialize_java_truststore(certs, encryption))
        return _keytool_pkcs12(entries, self.password)


def _refusal_notes(lines: Sequence[bytes]) -> tuple[Note, ...]:
    notes = []
    for line in lines:
        alias, _, why = line.decode("utf-8", "replace").partition(" ")
        if alias.startswith("edge-certd-"):
            notes.append(
                Note(
                    code="java_refused",
                    message=(
                        f"the Java truststore left out the CA with sha256 {alias[11:]}…, which Java's "
                        f"tools refused ({printable(why)}); every other target trusts it"
                    ),
                )
            )
    return tuple(notes)


def truststore_fingerprints(data: bytes, store_type: StoreKind, password: str) -> frozenset[str]:
    """SHA-256 of every trusted certificate in a truststore; empty when it cannot be read."""
    try:
        return frozenset(hashlib.sha256(der).hexdigest() for der in certificates(data, store_type, password))
    except ValueError:
        return frozenset()


def _keytool_pkcs12(entries: list[tuple[str, bytes]], password: str) -> bytes:
    keytool = shutil.which("keytool")
    if keytool is None:
        raise WriteError("java truststore", "keytool disappeared")
    with tempfile.TemporaryDirectory(prefix="edge-certd-java-") as work:
        source = os.path.join(work, "in.jks")
        target = os.path.join(work, "out.p12")
        with open(source, "wb") as handle:
            handle.write(jks_truststore(entries, password))
        argv = [
            keytool,
            "-importkeystore",
            "-noprompt",
            "-srckeystore",
            source,
            "-srcstoretype",
            "JKS",
            "-srcstorepass",
            password,
            "-destkeystore",
            target,
            "-deststoretype",
            "PKCS12",
            "-deststorepass",
            password,
        ]
        proc = subprocess.run(argv, capture_output=True, timeout=300, check=False)
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace").strip().splitlines()[-1:]
            raise WriteError(target, f"keytool failed: {' '.join(tail)}")
        with open(target, "rb") as handle:
            return handle.read()


def _cryptography_writes_pkcs12() -> bool:
    """cryptography >= 45 writes a Java truststore itself; older releases need keytool."""
    # Lazy: the daemon never loads cryptography (docs/ARCHITECTURE.md, test_daemon_footprint).
    from cryptography.hazmat.primitives.serialization import pkcs12

    return hasattr(pkcs12, "serialize_java_truststore")


def _choose(mode: str) -> tuple[JavaStoreKind | None, str]:
    """Pick the store type once; (None, why) when none can be written."""
    if mode == "off":
        return None, "bundles.java is off"
    if mode == "jks":
        return "jks", ""
    # keytool first: on a device without Java, `auto` decides without loading cryptography
    # into the daemon (issue 24), and writes nothing that no runtime there would read.
    if shutil.which("keytool"):
        return "pkcs12", ""
    if mode == "pkcs12":
        if _cryptography_writes_pkcs12():
            return "pkcs12", ""
        return (
            None,
            "this device has no Java (keytool not found); install a Java runtime, or set bundles.java: jks",
        )
    # auto: no Java here is the common case and nothing to fix, so this is information only.
    return None, "no Java on this device (keytool not found), so none is needed (bundles.java: auto)"
