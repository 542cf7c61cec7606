"""doctor's probes: the side effects (the disk, systemctl, the state lock), each returning
frozen facts for `judge` to judge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import SourceError, WriteError
from edge_certd.core.pem import pem_fingerprints
from edge_certd.core.text import printable
from edge_certd.diagnose.doctor.judge import (
    AziotFacts,
    DirFacts,
    EnvFacts,
    Role,
    ServiceFacts,
    TargetFacts,
    env_paths,
)
from edge_certd.store.directory_rules import DirectoryRules, check_directory
from edge_certd.store.fsutil import ReadError, read_bounded
from edge_certd.store.state import LoadedManifest, StatePaths, load_manifest, state_lock
from edge_certd.targets.registry import enabled_targets

# sd_booted(3): systemd is the init system exactly when this directory exists.
SYSTEMD_RUN_DIR = "/run/systemd/system"
UNIT = "edge-certd"
SYSTEMCTL_TIMEOUT = 15.0
# How long to wait for a running sync before judging the targets; an update with Java
# hooks can take minutes, and judging mid-sync would report half-applied trust as broken.
LOCK_WAIT = 60.0


def probe_directory(path: str, role: Role, rules: DirectoryRules) -> DirFacts:
    """What a source directory looks like, and whether sync would refuse it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return DirFacts(path, role, exists=False)
    except OSError as exc:
        return DirFacts(path, role, exists=True, problem=f"cannot be read ({exc.strerror})")
    try:
        check_directory(path, rules)
        problem = None
    except SourceError as exc:
        problem = exc.reason
    return DirFacts(
        path,
        role,
        exists=True,
        problem=problem,
        mode=stat.S_IMODE(info.st_mode),
        owner=f"{_user(info.st_uid)}:{_group(info.st_gid)}",
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# Read limits: far above any real file of its kind, far below what would hurt a device.
TOML_LIMIT = 1024 * 1024
ENV_LIMIT = 1024 * 1024
BUNDLE_LIMIT = 16 * 1024 * 1024


def probe_service(systemctl: list[str]) -> ServiceFacts:
    """`systemctl is-active edge-certd`, when systemd is the init system.

    The command is the configuration's on_change.systemctl, the same one the daemon
    uses to restart units, so a wrapper configured there is honoured here too.
    """
    if not os.path.isdir(SYSTEMD_RUN_DIR):
        return ServiceFacts(systemd=False)
    argv = [*systemctl, "is-active", UNIT]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        what = "timed out" if isinstance(exc, subprocess.TimeoutExpired) else str(exc)
        return ServiceFacts(systemd=True, error=f"{' '.join(argv)}: {what}")
    # is-active prints the state and exits 0 only for "active" (systemctl(1)).
    state = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0:
        return ServiceFacts(systemd=True, state=state or "active")
    return ServiceFacts(systemd=True, state=state or f"unknown (exit {proc.returncode})")


def probe_trust(config: Config) -> tuple[LoadedManifest, list[TargetFacts]]:
    """The manifest and what each trust target holds, read under the state lock.

    Raises:
        LockTimeout: a sync held the lock for LOCK_WAIT seconds.
    """
    paths = StatePaths(config.state_dir)
    with _lock_if_possible(paths):
        manifest = load_manifest(paths)
        targets = [
            TargetFacts(h.name, h.location, h.installed, h.skip_reason, h.fix)
            for target in enabled_targets(config)
            for h in target.holdings()
        ]
    return manifest, targets


@contextlib.contextmanager
def _lock_if_possible(paths: StatePaths) -> Iterator[None]:
    """Hold the state lock when this user can take it; otherwise read without it.

    Without the state directory nothing was ever synced, so there is nothing to wait
    for, and doctor must not create it.
    """
    with contextlib.ExitStack() as stack:
        if os.path.isdir(paths.state_dir):
            # WriteError: no permission to open the lock file (not root); read as is.
            with contextlib.suppress(WriteError):
                stack.enter_context(state_lock(paths, LOCK_WAIT))
        yield


def probe_env(env_file: str) -> EnvFacts:
    try:
        text = read_bounded(env_file, ENV_LIMIT).decode("utf-8")
    except ReadError as exc:
        if exc.missing:
            return EnvFacts(env_file, present=False)
        return EnvFacts(env_file, present=True, error=exc.reason)
    except UnicodeDecodeError as exc:
        return EnvFacts(env_file, present=True, error=f"cannot be read (not UTF-8 text: byte {exc.start})")
    found = tuple((key, value, os.path.isfile(value)) for key, value in env_paths(text))
    return EnvFacts(env_file, present=True, paths=found)


def probe_aziot(path: str, edge_roots: str) -> AziotFacts:
    """IoT Edge's config.toml, and the fingerprints in the file its trust_bundle_cert names."""
    try:
        document = load_toml(path)
    except ReadError as exc:
        if exc.missing:
            return AziotFacts(path, present=False, edge_roots=edge_roots)
        return AziotFacts(path, present=True, edge_roots=edge_roots, error=exc.reason)
    value = document.get("trust_bundle_cert")
    if not isinstance(value, str):
        return AziotFacts(path, present=True, edge_roots=edge_roots)
    # aziot takes a URI (`file:///path`); a bare absolute path is read as the same file.
    bundle = value.removeprefix("file://") if value.startswith(("file:///", "/")) else None
    facts = AziotFacts(path, present=True, edge_roots=edge_roots, trust_bundle_cert=value, bundle_path=bundle)
    if bundle is None:
        return facts
    try:
        data = read_bounded(bundle, BUNDLE_LIMIT)
    except ReadError as exc:
        return dataclasses.replace(facts, bundle_error=str(exc))
    return dataclasses.replace(facts, installed=frozenset(pem_fingerprints(data)))


def load_toml(path: str) -> dict[str, Any]:
    """A TOML file read as every outside file is (no link, no FIFO, bounded), then parsed.

    Raises:
        ReadError: it cannot be read safely, is not UTF-8 TOML, or nests too deeply.
    """
    raw = read_bounded(path, TOML_LIMIT)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ReadError(path, f"cannot be read (not UTF-8 text: byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReadError(path, f"cannot be read ({printable(str(exc), limit=200)})") from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table: 100,000 `[` would
        # otherwise end doctor with a traceback. No real config.toml nests past a few levels.
        raise ReadError(path, "cannot be read (arrays or tables nest too deeply)") from None
