"""scan → judge → plan → apply → record, under the state lock."""

from __future__ import annotations

import datetime as dt
import grp
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_certd import events
from edge_certd.config import Config
from edge_certd.errors import ApplyError, EdgeCertdError, SourceError
from edge_certd.fsutil import ensure_directory, read_bytes_quietly, remove_stale_temp_files
from edge_certd.model import FileVerdict, InstalledCA, Rejection, TrustedCA
from edge_certd.onchange import run_on_change
from edge_certd.plan import make_plan
from edge_certd.policy import Rules
from edge_certd.sources import (
    DirectoryRules,
    SourceFile,
    check_directory,
    scan_directory,
    tighten_mode,
)
from edge_certd.state import (
    StatePaths,
    clear_pending,
    is_pending,
    iso,
    load_blocked,
    load_manifest,
    load_status,
    mark_pending,
    remove_stale_state_temp_files,
    save_manifest,
    state_lock,
    update_status,
)
from edge_certd.sync_events import log_sync_events
from edge_certd.targets import Target
from edge_certd.targets.bundles import RuntimeBundles
from edge_certd.targets.java import JavaTruststore
from edge_certd.targets.system import SystemStore, load_installed
from edge_certd.verdict import DROP, KEYVAULT, judge_file
from edge_certd.verdict_cache import CACHE_NAME, VerdictCache

DROP_DIR_MODE = 0o2770  # setgid: files a technician drops keep the edge-certd group


@dataclass
class SyncResult:
    verdicts: list[FileVerdict] = field(default_factory=list)
    source_errors: list[SourceError] = field(default_factory=list)
    added: tuple[TrustedCA, ...] = ()
    removed: tuple[InstalledCA, ...] = ()
    managed: dict[str, InstalledCA] = field(default_factory=dict)
    update_summary: str = ""
    changed_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> list[Rejection]:
        return [r for v in self.verdicts for r in v.rejected]

    @property
    def trust_changed(self) -> bool:
        return bool(self.added or self.removed)


def rules_from(config: Config) -> Rules:
    p = config.policy
    return Rules(p.allow_intermediate, p.allow_expired, p.min_rsa_bits, p.allow_sha1_signature)


def read_passwords(config: Config) -> list[bytes]:
    """PFX passwords, one per file (trailing newline dropped). Unreadable files are skipped."""
    passwords = []
    for path in config.pfx_password_files:
        data = read_bytes_quietly(path)
        if data is not None:
            passwords.append(data.rstrip(b"\r\n"))
    return passwords




class Engine:
    """The sync engine for one configuration. Holds the targets; owns no long-lived state."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = StatePaths(config.state_dir)
        ts = config.trust_store
        self.system = SystemStore(ts.ca_dir, ts.update_command, ts.update_timeout)
        self.java = JavaTruststore(config.bundles.java, config.bundles.dir, ts.system_bundle,
                                   config.bundles.java_password)
        self.bundles = RuntimeBundles(config.bundles.dir, config.bundles.env_file,
                                      ts.system_bundle, self.java.env())
        self.dir_rules = DirectoryRules(config.sources.trusted_group,
                                        config.sources.check_ownership)

    def source_dirs(self) -> list[tuple[str, str]]:
        return [(self.config.drop_dir, DROP)] + [(d, KEYVAULT) for d in
                                                 self.config.keyvault_export_dirs]

    def ensure_drop_dir(self, force: bool = False) -> None:
        """Create the drop directory when missing: root and the edge-certd group may write.

        A drop directory that disappears after CAs came from it is not recreated (unless
        `force`, for `edge-certd add`): recreating it empty would remove them all at once.
        The sync reports it missing instead and keeps what it provided until it is back.
        """
        path = self.config.drop_dir
        if os.path.isdir(path):
            return
        prefix = path.rstrip("/") + "/"
        if not force and any(source.startswith(prefix)
                             for entry in load_manifest(self.paths).entries.values()
                             for source in entry.sources):
            return
        ensure_directory(path, 0o755)
        try:
            gid = grp.getgrnam(self.config.sources.trusted_group).gr_gid
            os.chown(path, -1, gid)
            os.chmod(path, DROP_DIR_MODE)
        except (KeyError, OSError):
            os.chmod(path, 0o700)  # no such group here: only the owner may drop files

    def judge_sources(self, now: dt.datetime, busy: frozenset[str] = frozenset()
                      ) -> tuple[list[FileVerdict], list[SourceError]]:
        """Read and judge every source file. Bad files become verdicts, never exceptions.

        Files in `busy` are still being written; they are skipped this time.
        """
        rules = rules_from(self.config)
        passwords = read_passwords(self.config)
        cache = VerdictCache(self.config.state_dir, rules, passwords)
        verdicts: list[FileVerdict] = []
        errors: list[SourceError] = []
        for directory, kind in self.source_dirs():
            if kind == KEYVAULT and not os.path.exists(directory):
                continue  # not exported yet: nothing to trust, nothing wrong
            try:
                check_directory(directory, self.dir_rules)
                files = scan_directory(directory, self.config.policy.max_file_bytes)
            except SourceError as exc:
                errors.append(exc)
                continue
            for source in files:
                if source.fs_path in busy:
                    continue
                verdict = self._judge_cached(cache, source, kind, rules, now, passwords)
                if any(r.code == "private_key" for r in verdict.rejected):
                    tighten_mode(source.fs_path)
                verdicts.append(verdict)
        try:
            cache.save()
        except EdgeCertdError:
            pass  # a full state disk costs time on the next start, nothing else
        return verdicts, errors

    @staticmethod
    def _judge_cached(cache: VerdictCache, source: SourceFile, kind: str, rules: Rules,
                      now: dt.datetime, passwords: Sequence[bytes]) -> FileVerdict:
        if source.data is None:
            return judge_file(source.path, None, source.problem, kind, rules, now, passwords)
        key = cache.key(source.content_sha256, kind)
        verdict = cache.get(key, source.path, now)
        if verdict is None:
            verdict = judge_file(source.path, source.data, None, kind, rules, now, passwords)
            cache.put(key, verdict)
        return verdict

    def sync(self, now: dt.datetime | None = None, busy: frozenset[str] = frozenset()
             ) -> SyncResult:
        """Bring every target in line with the sources.

        Raises:
            ApplyError: the trust store could not be updated; the previous state is kept,
                and the next sync retries.
        """
        now = now or dt.datetime.now(dt.UTC)
        with state_lock(self.paths):
            try:
                self.ensure_drop_dir()
            except EdgeCertdError:
                pass  # reported below as a source error
            return self._sync_locked(now, busy)

    def _sync_locked(self, now: dt.datetime, busy: frozenset[str]) -> SyncResult:
        result = SyncResult()
        # A crash mid-write leaves a temp file; under the lock no live writer owns one.
        # (status.json is cleaned by update_status, which has its own lock.)
        remove_stale_temp_files(self.system.ca_dir)
        remove_stale_state_temp_files(self.paths)
        remove_stale_temp_files(self.paths.state_dir, (CACHE_NAME,))
        remove_stale_temp_files(self.bundles.bundle_dir)
        remove_stale_temp_files(os.path.dirname(self.bundles.env_file),
                                (os.path.basename(self.bundles.env_file),))
        loaded = load_manifest(self.paths)
        if loaded.problem:
            result.notes.append(loaded.problem)
            events.emit("source_error", loaded.problem, logging.WARNING, reason="manifest_corrupt")
        present = self.system.present()
        result.verdicts, result.source_errors = self.judge_sources(now, busy)
        wanted, sources_of = _wanted(result.verdicts)
        for sha in load_blocked(self.paths) & set(wanted):
            del wanted[sha]
            result.notes.append(f"sha256 {sha[:16]}… stays removed (edge-certd remove); its "
                                f"source {', '.join(sources_of.pop(sha))} is still there")
        held = [e.path.rstrip("/") + "/" for e in result.source_errors] + sorted(busy)
        self._hold_sources(held, loaded.entries, present, wanted, sources_of)
        plan = make_plan(wanted, present)
        managed = [wanted[sha] for sha in sorted(wanted)]
        try:
            if plan.changes_trust:
                mark_pending(self.paths)
                outcome = self.system.apply(managed, plan)
                result.update_summary = outcome.detail
            elif is_pending(self.paths):
                result.update_summary = self.system.run_update(fresh=True).describe()
            followers: tuple[Target, ...] = (self.bundles, self.java)  # they copy the system bundle
            for target in followers:
                outcome = target.apply(managed, plan)
                if outcome.changed:
                    result.changed_files.append(outcome.detail)
                elif outcome.detail:
                    result.notes.append(outcome.detail)
            result.managed = self._manifest_entries(wanted, sources_of, loaded.entries, now)
            save_manifest(self.paths, result.managed)
            clear_pending(self.paths)
        except ApplyError as exc:
            self._record(result, now, error=exc)
            events.emit("update_failed", f"trust not updated, previous state kept: {exc}",
                        logging.ERROR, reason=str(exc))
            raise
        result.added, result.removed = plan.add, plan.remove
        log_sync_events(result, plan, load_status(self.paths))
        if result.trust_changed:
            run_on_change(self.config.on_change)
        self._record(result, now)
        return result

    def _hold_sources(self, held_paths: Sequence[str], manifest: dict[str, InstalledCA],
                      present: dict[str, InstalledCA], wanted: dict[str, TrustedCA],
                      sources_of: dict[str, list[str]]) -> None:
        """Keep what sources that cannot be read right now provided before.

        `held_paths` are directories ending in "/" (unsafe right now: we stop taking new
        files from them but keep what they gave) and files being written (their old
        content stays trusted until the new one is complete).
        """
        for prefix in held_paths:
            for sha, entry in manifest.items():
                held = [s for s in entry.sources if s == prefix or
                        (prefix.endswith("/") and s.startswith(prefix))]
                if not held or sha not in present:
                    continue
                ca = load_installed(present[sha].path)
                if ca is not None:
                    wanted.setdefault(sha, ca)
                    sources_of.setdefault(sha, []).extend(held)

    def _manifest_entries(self, wanted: dict[str, TrustedCA], sources_of: dict[str, list[str]],
                          old: dict[str, InstalledCA], now: dt.datetime) -> dict[str, InstalledCA]:
        entries = {}
        for sha, ca in wanted.items():
            previous = old.get(sha)
            entries[sha] = InstalledCA(
                sha256=sha, subject=ca.subject, not_after=ca.not_after, not_before=ca.not_before,
                path=self.system.path_for(ca), sources=tuple(sorted(set(sources_of[sha]))),
                installed_at=previous.installed_at if previous else now)
        return entries

    def _record(self, result: SyncResult, now: dt.datetime, error: Exception | None = None) -> None:
        """Write status.json for `edge-certd status` and the daemon's STATUS= line."""
        doc: dict[str, Any] = {
            "last_sync": {
                "time": iso(now),
                "result": "failed" if error else "ok",
                "error": str(error) if error else None,
                "added": len(result.added),
                "removed": len(result.removed),
                "update": result.update_summary,
            },
            "rejected": [
                {"source": r.source, "code": r.code, "message": r.message, "subject": r.subject,
                 "sha256": r.sha256, "content_sha256": v.content_sha256, "format": v.format}
                for v in result.verdicts for r in v.rejected
            ],
            "ignored": [{"source": i.source, "what": i.what, "format": v.format}
                        for v in result.verdicts for i in v.ignored],
            "source_errors": [{"path": e.path, "reason": e.reason} for e in result.source_errors],
            "bundles": {"edge_roots": self.bundles.edge_roots, "ca_bundle": self.bundles.ca_bundle,
                        "env_file": self.bundles.env_file, "java": self.java.path},
        }
        if error is None:
            doc["last_change"] = (iso(now) if result.trust_changed
                                  else load_status(self.paths).get("last_change"))
            if result.trust_changed:
                doc["last_change_counts"] = [len(result.added), len(result.removed)]
        try:
            update_status(self.paths, **doc)
        except EdgeCertdError:
            pass  # a full disk must not turn a good sync into a failed one


def _wanted(verdicts: Sequence[FileVerdict]) -> tuple[dict[str, TrustedCA], dict[str, list[str]]]:
    wanted: dict[str, TrustedCA] = {}
    sources_of: dict[str, list[str]] = {}
    for verdict in verdicts:
        for ca in verdict.accepted:
            wanted.setdefault(ca.sha256, ca)
            sources_of.setdefault(ca.sha256, []).append(verdict.source)
    return wanted, sources_of
