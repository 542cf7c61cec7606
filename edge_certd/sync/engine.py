"""scan → judge → plan → apply → record, under the state lock."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edge_certd.config import Config
from edge_certd.core.errors import ApplyError, EdgeCertdError, SourceError, UpdateCommandError
from edge_certd.core.hold import HoldDecision, decide
from edge_certd.core.judgement import JudgeContext, JudgeLimits, Rules
from edge_certd.core.model import (
    FileVerdict,
    FoldedRejections,
    InstalledCA,
    LastChange,
    Note,
    Reason,
    SourceKind,
    SourceProblem,
    SyncResult,
    TargetFailure,
)
from edge_certd.core.plan import Held, Wanted, make_plan, wanted_set
from edge_certd.core.text import iso
from edge_certd.store.directory_rules import DirectoryRules, check_directory, ensure_drop_dir
from edge_certd.store.fsutil import ReadError, read_bounded, remove_stale_temp_files
from edge_certd.store.names import package_dirs
from edge_certd.store.sources import display_path, scan_directory, tighten_mode
from edge_certd.store.state import (
    LoadedManifest,
    StatePaths,
    clear_pending,
    is_pending,
    load_blocked,
    load_manifest,
    mark_pending,
    remove_stale_state_temp_files,
    save_manifest,
    state_lock,
)
from edge_certd.store.verdict_cache import CACHE_NAME, VerdictCache
from edge_certd.sync import holds, journal_events, metrics, record
from edge_certd.sync.judging import Judging
from edge_certd.sync.onchange import run_on_change
from edge_certd.targets.base import Change
from edge_certd.targets.registry import followers, system_store
from edge_certd.targets.system import load_installed
from edge_certd.worker.pool import JudgeWorker


def rules_from(config: Config) -> Rules:
    p = config.policy
    return Rules(
        allow_intermediate=p.allow_intermediate,
        allow_expired=p.allow_expired,
        min_rsa_bits=p.min_rsa_bits,
        allow_sha1_signature=p.allow_sha1_signature,
    )


# A password file holds one line; 64 KiB is far past any password a PFX export asks for.
PASSWORD_LIMIT = 64 * 1024


def read_passwords(config: Config) -> list[bytes]:
    """PFX passwords, one per file (trailing newline dropped). Files that cannot be read
    safely (missing, a link, a FIFO, past PASSWORD_LIMIT) are skipped."""
    passwords = []
    for path in config.pfx_password_files:
        try:
            passwords.append(read_bounded(path, PASSWORD_LIMIT).rstrip(b"\r\n"))
        except ReadError:
            continue
    return passwords


def judge_context(config: Config, now: dt.datetime) -> JudgeContext:
    """What every file is judged against: the policy, the clock, the PFX passwords and the
    judge's limits, read afresh for each sync, so a reload reaches the judge at once."""
    p = config.policy
    return JudgeContext(
        rules=rules_from(config),
        now=now,
        passwords=tuple(read_passwords(config)),
        limits=JudgeLimits(cpu_seconds=p.judge_cpu_seconds, memory_mb=p.judge_memory_mb),
    )


@dataclass(frozen=True, kw_only=True)
class JudgedSources:
    verdicts: list[FileVerdict]
    problems: list[SourceProblem]
    # Files the judge could not judge (not their fault): held like busy files, retried.
    unavailable: list[str]
    folded: FoldedRejections  # junk counted, not kept (sync/judging.py)


def source_dirs(config: Config) -> list[tuple[str, SourceKind]]:
    # A roots package is judged like a drop: only CAs, and a private key refuses the file.
    packages = package_dirs(config.package_roots_dir) if config.package_roots_dir else []
    return (
        [(config.drop_dir, SourceKind.DROP)]
        + [(d, SourceKind.KEYVAULT) for d in config.keyvault_export_dirs]
        + [(d, SourceKind.DROP) for d in packages]
    )


class Engine:
    """The sync engine for one configuration. Holds the targets; owns no long-lived state.

    Args:
        heartbeat: called about once a second while the trust-store update runs, so the
            daemon can keep pinging systemd's watchdog.
        worker: the judge worker to use (the daemon keeps one warm); without one, each
            sync starts its own when a file needs judging and ends it afterwards.
    """

    def __init__(
        self, config: Config, heartbeat: Callable[[], None] | None = None, worker: JudgeWorker | None = None
    ) -> None:
        self.config = config
        self.worker = worker
        self.paths = StatePaths(config.state_dir)
        self.system = system_store(config, heartbeat)
        self.followers = followers(config)
        self.dir_rules = DirectoryRules(
            config.sources.trusted_group, config.sources.check_ownership, config.package_roots_dir
        )
        # The last sync's result, failed or not: what the daemon's metrics say between syncs.
        self.last_result: SyncResult | None = None

    def ensure_drop_dir(self, force: bool = False) -> None:
        """Create the drop directory when missing (see store.directory_rules.ensure_drop_dir).

        A drop directory that disappears after CAs came from it is not recreated (unless
        `force`, for `edge-certd add`): recreating it empty would remove them all at once.
        """
        if os.path.isdir(self.config.drop_dir):
            return
        prefix = self.config.drop_dir.rstrip("/") + "/"
        provided = any(
            source.startswith(prefix)
            for entry in load_manifest(self.paths).entries.values()
            for source in entry.sources
        )
        if force or not provided:
            ensure_drop_dir(self.config.drop_dir, self.config.sources.trusted_group)

    def judge_sources(self, now: dt.datetime, busy: frozenset[str] = frozenset()) -> JudgedSources:
        """Read and judge every source file. Bad files become verdicts, never exceptions.

        Files in `busy` are still being written; they are skipped this time. Files that
        leak a private key from the drop directory get mode 0600 afterwards.
        """
        worker = self.worker or JudgeWorker()
        try:
            return self._judge_sources(worker, now, busy)
        finally:
            if self.worker is None:
                worker.close()

    def _judge_sources(self, worker: JudgeWorker, now: dt.datetime, busy: frozenset[str]) -> JudgedSources:
        context = judge_context(self.config, now)
        cache = VerdictCache(self.config.state_dir, context)
        judging = Judging(worker=worker, cache=cache, context=context, said=journal_events.said(self.paths))
        problems: list[SourceProblem] = []
        for directory, kind in source_dirs(self.config):
            if kind is SourceKind.KEYVAULT and not os.path.exists(directory):
                continue  # not exported yet: nothing to trust, nothing wrong
            try:
                check_directory(directory, self.dir_rules)
                files = scan_directory(directory, self.config.policy.max_file_bytes, self.dir_rules)
            except SourceError as exc:
                problems.append(SourceProblem(path=exc.path, reason=exc.reason))
                continue
            for source in files:
                if source.fs_path not in busy:
                    judging.add(source, kind)
        verdicts = judging.finish()
        for path in judging.leaking:
            tighten_mode(path)
        try:
            cache.save()
        except EdgeCertdError:
            pass  # a full state disk costs time on the next start, nothing else
        return JudgedSources(
            verdicts=verdicts, problems=problems, unavailable=judging.unavailable, folded=judging.folded
        )

    def sync(self, now: dt.datetime | None = None, busy: frozenset[str] = frozenset()) -> SyncResult:
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
                pass  # reported by the sync as a source problem
            return self._sync_locked(now, busy)

    def _remove_stale_temp_files(self) -> None:
        # A crash mid-write leaves a temp file; under the lock no live writer owns one.
        remove_stale_temp_files(self.system.ca_dir)
        remove_stale_state_temp_files(self.paths)
        remove_stale_temp_files(
            self.paths.state_dir, (CACHE_NAME, journal_events.MEMORY_NAME, holds.HOLDS_NAME)
        )
        remove_stale_temp_files(self.config.bundles.dir)
        env_file = self.config.bundles.env_file
        remove_stale_temp_files(os.path.dirname(env_file), (os.path.basename(env_file),))

    def _sync_locked(self, now: dt.datetime, busy: frozenset[str]) -> SyncResult:
        self._remove_stale_temp_files()
        loaded = load_manifest(self.paths)
        notes: list[Note] = []
        if loaded.problem:
            notes.append(Note(code="manifest_corrupt", message=loaded.problem))
        present = self.system.present(known=loaded.entries)
        judged = self.judge_sources(now, busy)
        verdicts, problems = judged.verdicts, judged.problems
        # Busy files are named as the manifest names sources: an odd byte in a file name must
        # not stop its old content from being held while it is rewritten. A file the judge
        # could not judge is held the same way: a judge failure is not the file's fault.
        held_paths = (
            [p.path.rstrip("/") + "/" for p in problems]
            + sorted(display_path(path) for path in busy)
            + judged.unavailable
        )
        held = _held(held_paths, loaded.entries, present)
        early = _not_yet_valid_but_installed(verdicts, present)
        for sha, kept in early.items():
            held.setdefault(sha, kept)
            notes.append(
                Note(
                    code="clock_behind",
                    message=(
                        f'"{kept.ca.subject}" (sha256 {sha[:16]}…) is not valid until '
                        f"{iso(kept.ca.not_before)} by this device's clock, but it is installed: it "
                        "stays trusted; check the clock (timedatectl, NTP)"
                    ),
                )
            )
        if judged.unavailable:
            count = len(judged.unavailable)
            notes.append(
                Note(
                    code="judge_unavailable",
                    message=(
                        f"{count} file{'s' if count != 1 else ''} could not be judged now, not by "
                        f"their fault (first: {judged.unavailable[0]}); what they provided stays "
                        "trusted and they are judged again shortly"
                    ),
                )
            )
        blocked = load_blocked(self.paths)
        wanted = wanted_set(verdicts, removed_by_operator=blocked, held=held)
        subjects = {ca.sha256: ca.subject for v in verdicts for ca in v.accepted}
        for sha, sources in wanted.stay_removed.items():
            notes.append(
                Note(
                    code="stays_removed",
                    message=(
                        f'"{subjects.get(sha, sha[:16])}" (sha256 {sha[:16]}…) stays removed '
                        f"(edge-certd remove), though {', '.join(sources)} holds it; "
                        "`edge-certd add FILE` trusts it again"
                    ),
                )
            )
        plan = make_plan(wanted.cas, present)
        # The classic mistake of a rotation: a root whose source went away while the gateway
        # still anchors at it stays for gateway.grace_days (core/hold.py decides).
        decision = self._decide_holds(verdicts, blocked, held, plan.remove, loaded.entries, now)
        grace_kept = _read_back_holds(decision, present)
        if grace_kept:
            wanted = wanted_set(verdicts, removed_by_operator=blocked, held={**held, **grace_kept})
            plan = make_plan(wanted.cas, present)
        held_for_gateway = tuple(h for h in decision.keep if h.sha256 in grace_kept)
        change = Change(managed=wanted.managed(), plan=plan)
        update_summary = ""
        changed_files: list[str] = []
        failures: list[TargetFailure] = []
        last_change = loaded.last_change
        managed = self._manifest_entries(wanted, loaded.entries, now)
        try:
            if plan.changes_trust:
                mark_pending(self.paths)
                outcome = self.system.apply(change)
                update_summary = outcome.detail
                notes.extend(outcome.notes)
            elif is_pending(self.paths):
                update_summary = self.system.run_update(fresh=True).describe()
            for target in self.followers:  # they copy the system bundle just rebuilt
                try:
                    outcome = target.apply(change)
                except ApplyError as exc:
                    # One target's trouble (a full disk under the Java truststore, a CA
                    # keytool refuses) must not hold back the others, the manifest or
                    # on_change; this target is tried again at the next sync.
                    failures.append(TargetFailure(target=target.name, message=str(exc)))
                    continue
                notes.extend(outcome.notes)
                if outcome.changed:
                    changed_files.append(outcome.detail)
            if plan.changes_trust:
                # When the trust store actually changed, the moment the journal's lines
                # carry too: not the start of a sync that then waited on the update.
                last_change = LastChange(
                    time=dt.datetime.now(dt.UTC), added=len(plan.add), removed=len(plan.remove)
                )
            # Unchanged (every restart with nothing new): not even serialised to compare.
            if (
                loaded.problem
                or not loaded.entries
                or (managed, last_change)
                != (
                    loaded.entries,
                    loaded.last_change,
                )
            ):
                save_manifest(self.paths, managed, last_change)
            clear_pending(self.paths)
            try:
                holds.save_records(self.config, [r for r in decision.records if r.sha256 in grace_kept])
            except EdgeCertdError as exc:
                notes.append(Note(code="holds_not_saved", message=f"the grace holds were not saved: {exc}"))
        except ApplyError as exc:
            failed = SyncResult(
                time=now,
                verdicts=tuple(verdicts),
                source_problems=tuple(problems),
                managed=loaded.entries,
                notes=tuple(notes),
                last_change=loaded.last_change,
                error=str(exc),
                judge_unavailable=tuple(judged.unavailable),
                held_for_gateway=held_for_gateway,  # still installed: nothing was removed
                folded=judged.folded,
            )
            journal_events.log_failure(failed, exc)
            record.write_status(self.paths, failed, self.config)
            self.last_result = failed
            metrics.after_sync(
                self.config, self.paths, failed, update_ran=isinstance(exc, UpdateCommandError)
            )
            raise
        result = SyncResult(
            time=now,
            verdicts=tuple(verdicts),
            source_problems=tuple(problems),
            added=plan.add,
            removed=plan.remove,
            managed=managed,
            update_summary=update_summary,
            changed_files=tuple(changed_files),
            notes=tuple(notes),
            target_failures=tuple(failures),
            removed_by_operator=tuple(ca.sha256 for ca in plan.remove if ca.sha256 in blocked),
            last_change=last_change,
            judge_unavailable=tuple(judged.unavailable),
            held_for_gateway=held_for_gateway,
            folded=judged.folded,
        )
        holds.log_decision(decision, grace_kept)
        journal_events.log_sync(result, self.paths)
        if result.trust_changed:
            run_on_change(self.config.on_change)
        record.write_status(self.paths, result, self.config)
        self.last_result = result
        metrics.after_sync(self.config, self.paths, result, update_ran=bool(update_summary))
        return result

    def _decide_holds(
        self,
        verdicts: Sequence[FileVerdict],
        blocked: frozenset[str],
        held: Mapping[str, Held],
        removals: Sequence[InstalledCA],
        manifest: Mapping[str, InstalledCA],
        now: dt.datetime,
    ) -> HoldDecision:
        records = holds.load_records(self.config)
        if not removals and not records:
            return HoldDecision(keep=(), started=(), ended=(), records=())  # the usual sync: no reads
        return decide(
            removals=removals,
            managed=manifest,
            provided={ca.sha256 for v in verdicts for ca in v.accepted},
            kept_otherwise=frozenset(held),
            probes=holds.last_probes(self.config),
            records=records,
            blocked=blocked,
            grace_days=self.config.gateway.grace_days,
            now=now,
            watching=bool(self.config.gateway.host or self.config.gateway.connection_string_file),
        )

    def _manifest_entries(
        self, wanted: Wanted, old: Mapping[str, InstalledCA], now: dt.datetime
    ) -> dict[str, InstalledCA]:
        entries = {}
        for sha, ca in wanted.cas.items():
            previous = old.get(sha)
            entries[sha] = InstalledCA(
                sha256=sha,
                subject=ca.subject,
                not_before=ca.not_before,
                not_after=ca.not_after,
                path=self.system.path_for(ca),
                sources=wanted.sources[sha],
                installed_at=previous.installed_at if previous else now,
            )
        return entries


def _not_yet_valid_but_installed(
    verdicts: Sequence[FileVerdict], present: Mapping[str, InstalledCA]
) -> dict[str, Held]:
    """Installed roots that are refused now only because the clock reads a time before
    their notBefore: a board without an RTC boots in the past, and removing its gateway's
    root until NTP answers would cut it off from the network that brings NTP."""
    held: dict[str, Held] = {}
    for verdict in verdicts:
        for rejection in verdict.rejected:
            sha = rejection.sha256
            if rejection.code is not Reason.NOT_YET_VALID or sha is None or sha not in present:
                continue
            ca = load_installed(present[sha].path)
            if ca is not None:
                before = held[sha].sources if sha in held else ()
                held[sha] = Held(ca=ca, sources=(*before, verdict.source))
    return held


def _read_back_holds(decision: HoldDecision, present: Mapping[str, InstalledCA]) -> dict[str, Held]:
    """The held CAs read back from ca_dir (what edge-certd wrote and trusted), as the plan's
    `held`; one that cannot be read back is not kept."""
    kept: dict[str, Held] = {}
    for hold in decision.keep:
        ca = load_installed(present[hold.sha256].path) if hold.sha256 in present else None
        if ca is not None and ca.sha256 == hold.sha256:
            kept[hold.sha256] = Held(ca=ca, sources=hold.sources)
    return kept


def _held(
    held_paths: Sequence[str], manifest: Mapping[str, InstalledCA], present: Mapping[str, InstalledCA]
) -> dict[str, Held]:
    """What sources that cannot be read right now provided before, read back from ca_dir.

    `held_paths` are directories ending in "/" (unsafe right now: no new files are taken
    from them, but what they gave stays) and files being written (their old content stays
    trusted until the new one is complete).
    """
    held: dict[str, Held] = {}
    for prefix in held_paths:
        for sha, entry in manifest.items():
            sources = tuple(
                s for s in entry.sources if s == prefix or (prefix.endswith("/") and s.startswith(prefix))
            )
            if not sources or sha not in present:
                continue
            ca = load_installed(present[sha].path)
            if ca is not None:
                before = held[sha].sources if sha in held else ()
                held[sha] = Held(ca=ca, sources=before + sources)
    return held


__all__ = ["Engine", "LoadedManifest", "read_passwords", "rules_from", "source_dirs"]
