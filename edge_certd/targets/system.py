"""The OS trust store: our subdirectory of /usr/local/share/ca-certificates plus the update command."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edge_certd.core.errors import UpdateCommandError, WriteError
from edge_certd.core.model import InstalledCA, Note, TrustedCA
from edge_certd.core.pem import der_to_pem, iter_pem_ders, pem_fingerprints
from edge_certd.core.plan import OWNED_FILE, file_name
from edge_certd.store.fsutil import (
    ensure_directory,
    fsync_directory,
    read_bytes,
    read_bytes_quietly,
    remove_file,
    write_atomic,
)
from edge_certd.targets.base import Change, Holding, Outcome, StoreFile

# ca-certificates-java's hook; present only where Java's system keystore is managed.
JAVA_HOOK = "/etc/ca-certificates/update.d/jks-keystore"
_SUMMARY = re.compile(r"(\d+) added, (\d+) removed")


@dataclass(frozen=True, kw_only=True)
class UpdateSummary:
    added: int | None
    removed: int | None
    output: str

    def describe(self) -> str:
        if self.added is None:
            return "update finished"
        return f"{self.added} added, {self.removed} removed"


class SystemStore:
    """Files in `ca_dir` (one per CA) and `update-ca-certificates` to fold them in."""

    name = "system"

    def __init__(
        self,
        *,
        ca_dir: str,
        system_bundle: str,
        update_command: Sequence[str],
        timeout: float,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        """`heartbeat` is called about once a second while the update command runs, so the
        daemon can keep telling systemd's watchdog it is alive during a slow Java hook."""
        self.ca_dir = ca_dir
        self.system_bundle = system_bundle
        self.update_command = list(update_command)
        self.timeout = timeout
        self.heartbeat = heartbeat

    def present(self, known: Mapping[str, InstalledCA] | None = None) -> dict[str, InstalledCA]:
        """Every CA file edge-certd owns in ca_dir, keyed by SHA-256.

        Owned files that cannot be read as a certificate are keyed by their name, so that
        the plan removes them. A file whose certificate's SHA-256 is in `known` (the
        manifest) takes its subject and dates from there, unparsed: a restart with 1,000 CAs
        spent 0.09 s parsing them again (issue 24).
        """
        found: dict[str, InstalledCA] = {}
        try:
            names = sorted(os.listdir(self.ca_dir))
        except FileNotFoundError:
            return found
        for name in names:
            if not OWNED_FILE.match(name):
                continue
            path = os.path.join(self.ca_dir, name)
            entry = _known_installed(path, known) if known else None
            entry = entry or _read_installed(path)
            found[entry.sha256] = entry
        return found

    def holdings(self) -> tuple[Holding, ...]:
        return (
            Holding(
                name="ca_dir",
                location=self.ca_dir,
                installed=frozenset(self.present()),
                fix="run `edge-certd sync`; it writes the file again and rebuilds the system bundle",
            ),
            # With every file in ca_dir the plan is empty and sync runs no update.
            Holding(
                name="system bundle",
                location=self.system_bundle,
                installed=frozenset(bundle_fingerprints(self.system_bundle)),
                fix="run update-ca-certificates (or trust_store.update_command) to "
                "rebuild the bundle from ca_dir",
            ),
        )

    def env(self) -> tuple[tuple[str, str], ...]:
        return ()

    def stores(self) -> tuple[StoreFile, ...]:
        # OpenSSL's default paths are a CA file and the hashed directory beside it
        # (/usr/lib/ssl/cert.pem -> /etc/ssl/certs/ca-certificates.crt, and /etc/ssl/certs);
        # update-ca-certificates writes both.
        return (
            StoreFile(
                key="system",
                title="system store",
                used_by="runtimes on OpenSSL's default paths (Python ssl, curl, Go, .NET, Debian's Node.js)",
                path=self.system_bundle,
                directory=os.path.dirname(self.system_bundle) or None,
            ),
        )

    def apply(self, change: Change) -> Outcome:
        """Write added CAs, remove dropped ones, then run the update command once.

        Raises:
            UpdateCommandError: the command failed; ca_dir is rolled back to what it was.
            WriteError: ca_dir cannot be written; it is rolled back as far as possible.
        """
        plan = change.plan
        if not plan.changes_trust:
            return Outcome(changed=False)
        ensure_directory(self.ca_dir, 0o755)
        written: list[str] = []
        removed: list[tuple[str, bytes | None]] = []
        try:
            for ca in plan.add:
                path = self.path_for(ca)
                write_atomic(path, der_to_pem(ca.der), 0o644, sync_directory=False)
                written.append(path)
            for gone in plan.remove:
                removed.append((gone.path, read_bytes(gone.path)))
                remove_file(gone.path)
            # One directory fsync for the whole batch (one per file costs seconds on flash).
            # Durable enough: the update runs only after it, and until the update finishes
            # the pending marker makes a restart redo this whole step.
            fsync_directory(self.ca_dir)
            # --fresh: without it Debian keeps the /etc/ssl/certs symlinks of removed local CAs.
            summary = self.run_update(fresh=bool(plan.remove))
        except (UpdateCommandError, WriteError, OSError):
            self._roll_back(written, removed)
            raise
        notes = self._refresh_java_system_keystore() if plan.remove else ()
        return Outcome(changed=True, detail=summary.describe(), notes=notes)

    def path_for(self, ca: TrustedCA) -> str:
        return os.path.join(self.ca_dir, file_name(ca))

    def run_update(self, *, fresh: bool) -> UpdateSummary:
        """Run the update command with a timeout; its whole process group dies on timeout.

        Raises:
            UpdateCommandError: non-zero exit, timeout, or the command cannot be started.
        """
        argv = self.update_command + (["--fresh"] if fresh else [])
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise UpdateCommandError(argv, 127, f"cannot run: {exc.strerror}") from None
        raw = self._wait(proc, argv)
        output = raw.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise UpdateCommandError(argv, proc.returncode, output)
        match = _SUMMARY.search(output)
        return UpdateSummary(
            added=int(match.group(1)) if match else None,
            removed=int(match.group(2)) if match else None,
            output=output,
        )

    def _wait(self, proc: subprocess.Popen[bytes], argv: list[str]) -> bytes:
        """The command's output once it has ended, feeding the watchdog while it runs.

        communicate() in one-second slices: after a TimeoutExpired it may be called again
        without losing output (subprocess docs, Popen.communicate), and between slices the
        heartbeat keeps systemd's watchdog from killing a daemon whose update is slow.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                output, _ = proc.communicate(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                return output or b""
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _kill_group(proc)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.communicate(timeout=5)  # reap it; a pipe held elsewhere is let go
                    raise UpdateCommandError(argv, None, f"no result after {self.timeout:.0f} s") from None
                if self.heartbeat:
                    self.heartbeat()

    def _refresh_java_system_keystore(self) -> tuple[Note, ...]:
        """Drop removed CAs from /etc/ssl/certs/java/cacerts too.

        update-ca-certificates never tells its hooks about a deleted local CA, even with
        --fresh, so ca-certificates-java would keep trusting it. Its own "fresh" trigger
        rebuilds the keystore from /etc/ssl/certs. Only for the real system store: a test
        tree's update_command (a wrapper, or one with --hooksdir) must never run dpkg.
        """
        command = self.update_command
        if (
            len(command) != 1
            or os.path.basename(command[0]) != "update-ca-certificates"
            or not os.path.exists(JAVA_HOOK)
        ):
            return ()
        for argv in (
            ["dpkg-trigger", "--no-await", "update-ca-certificates-java-fresh"],
            ["dpkg", "--triggers-only", "--pending"],
        ):
            try:
                subprocess.run(
                    argv, capture_output=True, timeout=self.timeout, check=True, stdin=subprocess.DEVNULL
                )
            except (OSError, subprocess.SubprocessError) as exc:
                # The system store is already right; Java lags until the next removal.
                return (
                    Note(
                        code="java_keystore_refresh_failed",
                        message=f"{' '.join(argv)} failed ({exc}); Java's system "
                        "keystore may still hold a removed CA",
                    ),
                )
        return ()

    def _roll_back(self, written: list[str], removed: list[tuple[str, bytes | None]]) -> None:
        for path in written:
            try:
                remove_file(path)
            except WriteError:
                pass  # read-only ca_dir: nothing was written there either
        for path, data in removed:
            if data is not None:
                with contextlib.suppress(WriteError):
                    write_atomic(path, data, 0o644)


def bundle_fingerprints(bundle_path: str) -> set[str]:
    """SHA-256 fingerprints of every certificate in the system bundle."""
    return pem_fingerprints(read_bytes_quietly(bundle_path) or b"")


def load_installed(path: str) -> TrustedCA | None:
    """The CA in one of our ca_dir files, or None when it cannot be read as one."""
    # Lazy: the daemon never loads cryptography (docs/ARCHITECTURE.md, test_daemon_footprint).
    from cryptography import x509

    from edge_certd.core.policy import display_subject, validity

    for der in iter_pem_ders(read_bytes_quietly(path) or b""):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        not_before, not_after = validity(cert)
        return TrustedCA(
            sha256=hashlib.sha256(der).hexdigest(),
            subject=display_subject(cert),
            not_before=not_before,
            not_after=not_after,
            der=der,
        )
    return None


def _known_installed(path: str, known: Mapping[str, InstalledCA]) -> InstalledCA | None:
    """The file's entry from `known` when it holds exactly one certificate whose SHA-256 is
    there (what edge-certd writes); None sends it to a full read."""
    ders = list(itertools.islice(iter_pem_ders(read_bytes_quietly(path) or b""), 2))
    if len(ders) != 1:
        return None
    entry = known.get(hashlib.sha256(ders[0]).hexdigest())
    if entry is None:
        return None
    stamp = dt.datetime.fromtimestamp(0, dt.UTC)
    return dataclasses.replace(entry, path=path, sources=(), installed_at=stamp)


def _read_installed(path: str) -> InstalledCA:
    stamp = dt.datetime.fromtimestamp(0, dt.UTC)
    ca = load_installed(path)
    if ca is None:
        key = "unreadable:" + os.path.basename(path)
        return InstalledCA(
            sha256=key,
            subject="<unreadable>",
            not_before=stamp,
            not_after=stamp,
            path=path,
            sources=(),
            installed_at=stamp,
        )
    return InstalledCA(
        sha256=ca.sha256,
        subject=ca.subject,
        not_before=ca.not_before,
        not_after=ca.not_after,
        path=path,
        sources=(),
        installed_at=stamp,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
