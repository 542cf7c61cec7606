"""What pydantic's types cannot say: ranges, paths, and directories that must stay apart.

Checked in plain Python after the model is built, so the rules read the same under pydantic
1 and 2. Each rule yields (key path, message); the package adds the line number.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edge_certd.config.paths import PATH_KEYS, PATH_LIST_KEYS

if TYPE_CHECKING:
    from edge_certd.config.model import Config

__all__ = ["CA_DIR_PREFIX", "Problem", "check", "tidy_path"]

Problem = tuple[tuple[str, ...], str]

# ca_dir must be edge-certd's own directory: sync deletes any `<name>-<16 hex>.crt` in it that
# it does not want, and purge removes it whole.
CA_DIR_PREFIX = "edge-certd"

DAY = 86400.0
# (key, lowest, highest): every count, interval and timeout, finite and inside these bounds.
# The lower bounds stop busy loops (rescan_interval: 0); the upper ones catch unit mistakes.
_RANGES: tuple[tuple[tuple[str, str], float, float], ...] = (
    (("trust_store", "update_timeout"), 0.1, DAY),
    (("on_change", "timeout"), 0.1, DAY),
    (("watch", "settle_ms"), 1, 60_000),
    (("watch", "rescan_interval"), 1, 30 * DAY),
    (("watch", "retry_initial_seconds"), 0.1, DAY),
    (("watch", "retry_max_seconds"), 0.1, DAY),
    (("expiry", "check_interval"), 1, 30 * DAY),
    (("policy", "min_rsa_bits"), 1024, 16384),
    (("policy", "max_file_bytes"), 1024, 64 * 1024 * 1024),
    (("policy", "judge_cpu_seconds"), 1, 600),
    # Python and cryptography alone map about 40 MB in the worker.
    (("policy", "judge_memory_mb"), 64, 4096),
    (("gateway", "timeout"), 0.1, 600),
    (("gateway", "port"), 1, 65535),
    (("gateway", "grace_days"), 0, 3650),
    # One series per managed CA in edge_certd_ca_not_after_timestamp_seconds.
    (("metrics", "max_ca_series"), 1, 10_000),
)
MAX_WARN_DAYS = 3650
MAX_PASSWORD = 128
MAX_PATH = 4096

# Values the env file carries (targets/envfile.py) are single-quoted there. Inside single
# quotes sh and systemd's EnvironmentFile= both take every character literally, but neither
# can write a single quote inside them the same way, so a quote is refused here.
_ENV_VALUE_KEYS = (("bundles", "dir"), ("bundles", "java_password"))


def tidy_path(value: object) -> object:
    """`/srv//drop/./` -> `/srv/drop`. Anything else (a relative path, `..`) is left for
    `check` to refuse: `..` cannot be resolved without following symlinks."""
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        return value
    return "/" + "/".join(part for part in value.split("/") if part not in ("", "."))


def check(config: Config) -> list[Problem]:
    """Every problem found; overlaps are judged only once every path is absolute and tidy."""
    paths = list(_paths(config))
    overlaps = [] if paths else list(_overlaps(config))
    return [*_ranges(config), *_strings(config), *paths, *overlaps]


def _get(config: Config, key: tuple[str, ...]) -> Any:
    value: Any = config
    for part in key:
        value = getattr(value, part)
    return value


def _ranges(config: Config) -> Iterator[Problem]:
    for key, low, high in _RANGES:
        value = _get(config, key)
        if value is None:
            continue  # optional (gateway.port)
        if isinstance(value, bool) or not math.isfinite(value) or not low <= value <= high:
            yield key, f"must be a number from {low:.10g} to {high:.10g}, got {value!r}"
    watch = config.watch
    if watch.retry_max_seconds < watch.retry_initial_seconds:
        yield ("watch", "retry_max_seconds"), "must not be smaller than retry_initial_seconds"
    for section, thresholds in (("expiry", config.expiry.warn_days), ("gateway", config.gateway.warn_days)):
        for i, days in enumerate(thresholds):
            if isinstance(days, bool) or not 0 <= days <= MAX_WARN_DAYS:
                yield (section, "warn_days", str(i)), f"must be 0 to {MAX_WARN_DAYS} days, got {days!r}"
        if len(thresholds) > 16:
            yield (section, "warn_days"), "at most 16 thresholds"


def _all_strings(value: Any, key: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _all_strings(item, (*key, str(i)))
    elif hasattr(type(value), "model_fields") or hasattr(type(value), "__fields__"):
        # pydantic 2's model_fields first: its __fields__ warns that it is deprecated.
        fields = getattr(type(value), "model_fields", None) or type(value).__fields__
        for name in fields:
            yield from _all_strings(getattr(value, name), (*key, name))


def _strings(config: Config) -> Iterator[Problem]:
    for key, text in _all_strings(config, ()):
        bad = next((ch for ch in text if not ch.isprintable()), None)
        if bad is not None:
            # A newline in a path or a password would split a line of the env file or the
            # journal; no value here needs one.
            yield key, f"contains the control character U+{ord(bad):04X}; use printable text"
    for key in _ENV_VALUE_KEYS:
        if "'" in _get(config, key):
            yield key, "must not contain a single quote (') : the env file quotes values with it"
    password = config.bundles.java_password
    if not 1 <= len(password) <= MAX_PASSWORD:
        yield ("bundles", "java_password"), f"must be 1 to {MAX_PASSWORD} characters"
    if " " in password or '"' in password:
        # The JVM splits JAVA_TOOL_OPTIONS at whitespace, with no quoting before JDK 9 and
        # `"` as a quote from 9 on; a shell splits $EDGE_CERTD_JAVA_OPTS at spaces with none.
        yield (
            ("bundles", "java_password"),
            (
                'must not contain a space or a double quote ("): Java reads the password from '
                "JAVA_TOOL_OPTIONS and $EDGE_CERTD_JAVA_OPTS, which are split at spaces"
            ),
        )
    if not config.sources.trusted_group:
        yield ("sources", "trusted_group"), "must not be empty"
    for key in (("trust_store", "update_command"), ("on_change", "systemctl")):
        argv = _get(config, key)
        if not argv or not argv[0]:
            yield key, "must name a program (a non-empty list whose first item is not empty)"
    for i, argv in enumerate(config.on_change.commands):
        if not argv or not argv[0]:
            yield ("on_change", "commands", str(i)), "must be a non-empty argv list"
    for i, unit in enumerate(config.on_change.restart_units):
        if not unit or unit.startswith("-"):
            yield ("on_change", "restart_units", str(i)), "must be a unit name"


def _path_keys(config: Config) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every path the configuration holds: the keys config/__init__.py tidies, one list."""
    for key in PATH_KEYS:
        value = _get(config, key)
        if value is not None:  # package_roots_dir and the connection string file are optional
            yield key, value
    for name in PATH_LIST_KEYS:
        for i, value in enumerate(getattr(config, name)):
            yield (name, str(i)), value


def _paths(config: Config) -> Iterator[Problem]:
    if len(os.fsencode(config.control_socket)) > 107:  # sun_path holds 108 bytes with its NUL
        yield ("control_socket",), "longer than the 107 bytes a Unix socket's path may have"
    for key, value in _path_keys(config):
        if not value.startswith("/"):
            yield key, f"must be an absolute path, got {value!r}"
        elif ".." in value.split("/"):
            yield key, f"must not contain '..' (write the directory it means), got {value!r}"
        elif len(value) > MAX_PATH:
            yield key, f"longer than {MAX_PATH} characters"
        elif value == "/":
            yield key, "must not be / itself"
    ca_dir = config.trust_store.ca_dir
    if ca_dir != "/" and not posixpath.basename(ca_dir).startswith(CA_DIR_PREFIX):
        yield (
            ("trust_store", "ca_dir"),
            f"must be edge-certd's own directory, named {CA_DIR_PREFIX}* (e.g. "
            "/usr/local/share/ca-certificates/edge-certd): sync deletes the CA files in it "
            "that it did not install and purge removes it whole, so it must never be a shared "
            f"directory; got {ca_dir!r}",
        )


def _within(inner: str, outer: str) -> bool:
    """True when `inner` is `outer` or below it (lexically; both are absolute and tidy)."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _overlaps(config: Config) -> Iterator[Problem]:
    sources = [(("drop_dir",), config.drop_dir)] + [
        (("keyvault_export_dirs", str(i)), d) for i, d in enumerate(config.keyvault_export_dirs)
    ]
    packages = [(("package_roots_dir",), config.package_roots_dir)] if config.package_roots_dir else []
    ca_dir = (("trust_store", "ca_dir"), config.trust_store.ca_dir)
    state = (("state_dir",), config.state_dir)
    bundles = (("bundles", "dir"), config.bundles.dir)
    env_file = (("bundles", "env_file"), config.bundles.env_file)
    system_bundle = (("trust_store", "system_bundle"), config.trust_store.system_bundle)
    textfile_dir = (("metrics", "textfile_dir"), config.metrics.textfile_dir)

    for key, src in sources + packages:
        where = f"{'.'.join(key)} ({src})"
        # Each: (what, its path, why it must not be inside a source directory).
        for (other_key, other), why in (
            (
                bundles,
                "ca-bundle.pem would be read back as a source, so every public root "
                "would become a CA edge-certd manages",
            ),
            (
                system_bundle,
                "the system bundle would be read back as a source, so every "
                "public root would become a CA edge-certd manages",
            ),
            (ca_dir, "the installed CAs would be read back as sources and could never be removed"),
            (
                state,
                "whoever may write the source directory could rewrite the manifest and the verdict cache",
            ),
            (
                env_file,
                "whoever may write the source directory could replace the env file that services source",
            ),
            (textfile_dir, "edge-certd.prom would be read back as a source and rejected at every sync"),
        ):
            if _within(other, src):
                yield other_key, f"must not be inside the source directory {where}: {why}"
        if _within(src, ca_dir[1]):
            yield (
                key,
                (
                    f"must not be inside trust_store.ca_dir ({ca_dir[1]}): "
                    "update-ca-certificates reads its subdirectories too, so files copied "
                    "there would be trusted without any check"
                ),
            )
    seen: dict[str, str] = {}
    for key, src in sources:
        if src in seen:
            yield (
                key,
                (
                    f"is the same directory as {seen[src]}; a drop directory and a Key "
                    "Vault export are judged by different rules, so give each its own"
                ),
            )
        seen.setdefault(src, ".".join(key))
    for (_, roots), (key, src) in ((p, s) for p in packages for s in sources):
        if _within(src, roots) or _within(roots, src):
            yield (
                key,
                (
                    f"must not overlap package_roots_dir ({roots}): each subdirectory there is "
                    "one roots package's own, writable only by root"
                ),
            )
    for other_key, other in (state, bundles):
        if _within(other, ca_dir[1]) or _within(ca_dir[1], other):
            yield (
                ca_dir[0],
                (
                    f"must not overlap {'.'.join(other_key)} ({other}): ca_dir holds "
                    "only the CA files edge-certd installs"
                ),
            )
    for other_key, other in (env_file, system_bundle, textfile_dir):
        if _within(other, ca_dir[1]):
            yield (
                other_key,
                (
                    f"must not be inside trust_store.ca_dir ({ca_dir[1]}): ca_dir "
                    "holds only the CA files edge-certd installs"
                ),
            )
