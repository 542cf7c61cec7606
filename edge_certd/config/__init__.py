"""Configuration: YAML validated by pydantic, handed on as frozen models.

This is the only package that imports pydantic or yaml (loader.py reads the YAML, rules.py
checks what the types cannot say). It works with pydantic 1.10
(Debian 12) and pydantic 2 (PyPI) by touching only the API the two share.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Literal

import pydantic
import yaml

from edge_certd.config import rules
from edge_certd.config.loader import MAX_BYTES, Refused, load_yaml
from edge_certd.config.paths import PATH_KEYS, PATH_LIST_KEYS
from edge_certd.core.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/edge-certd/config.yaml"
CONFIG_ENV = "EDGE_CERTD_CONFIG"

_PYDANTIC_V2 = pydantic.VERSION.startswith("2")


if _PYDANTIC_V2:

    class _Section(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)  # type: ignore[typeddict-unknown-key]

else:  # pragma: no cover - exercised by the Debian 12 test run

    class _Section(pydantic.BaseModel):  # type: ignore[no-redef]
        class Config:
            extra = "forbid"
            allow_mutation = False


# Where the package installs the example that documents every key (debian/edge-certd.examples).
EXAMPLE_PATH = "/usr/share/doc/edge-certd/examples/config.example.yaml"


# Where Debian's and Ubuntu's ca-certificates install it. An absolute path: /usr/sbin is not on
# a normal user's PATH, and a bare name there made a non-root trial fail with exit 127.
UPDATE_CA_CERTIFICATES = "/usr/sbin/update-ca-certificates"
# Where a bare program name in update_command is also looked for, after $PATH.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class TrustStoreConfig(_Section):
    ca_dir: str = "/usr/local/share/ca-certificates/edge-certd"
    update_command: list[str] = [UPDATE_CA_CERTIFICATES]
    system_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    update_timeout: float = 300.0


class BundlesConfig(_Section):
    dir: str = "/var/lib/edge-certd/bundles"
    env_file: str = "/etc/edge-certd/ca.env"
    java: Literal["auto", "pkcs12", "jks", "off"] = "auto"
    java_password: str = "changeit"


class PolicyConfig(_Section):
    allow_intermediate: bool = False
    allow_expired: bool = False
    min_rsa_bits: int = 2048
    allow_sha1_signature: bool = False
    max_file_bytes: int = 1048576
    # Each file is judged in a child process under these limits (see worker/).
    judge_cpu_seconds: int = 5
    judge_memory_mb: int = 256


class OnChangeConfig(_Section):
    restart_units: list[str] = []
    commands: list[list[str]] = []
    systemctl: list[str] = ["systemctl"]
    timeout: float = 60.0


class WatchConfig(_Section):
    settle_ms: int = 100
    rescan_interval: float = 3600.0
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 300.0


class ExpiryConfig(_Section):
    warn_days: list[int] = [30, 7, 1]
    check_interval: float = 86400.0


class SourcesConfig(_Section):
    # Source directories must be owned by root or by this group, and never world-writable.
    trusted_group: str = "edge-certd"
    check_ownership: bool = True


class GatewayConfig(_Section):
    host: str | None = None
    port: int | None = None
    protocols: list[Literal["mqtts", "amqps", "https"]] = ["mqtts"]
    connection_string_file: str | None = None
    servername: str | None = None
    timeout: float = 10.0


class MetricsConfig(_Section):
    # auto: write when textfile_dir exists (Debian's prometheus-node-exporter creates it);
    # always: create it when missing; never: write nothing.
    textfile: Literal["auto", "always", "never"] = "auto"
    textfile_dir: str = "/var/lib/prometheus/node-exporter"
    max_ca_series: int = 100


class Config(_Section):
    drop_dir: str = "/var/lib/edge-certd/drop"
    keyvault_export_dirs: list[str] = []
    # Each subdirectory is the read-only source of one roots package (`edge-certd package`);
    # null turns package sources off.
    package_roots_dir: str | None = "/usr/share/edge-certd/roots.d"
    state_dir: str = "/var/lib/edge-certd"
    # Where the daemon listens for the CLI (systemd's edge-certd.socket creates it, group
    # edge-certd, mode 0660); without systemd the daemon binds it itself.
    control_socket: str = "/run/edge-certd/control"
    pfx_password_files: list[str] = []
    trust_store: TrustStoreConfig = TrustStoreConfig()
    bundles: BundlesConfig = BundlesConfig()
    policy: PolicyConfig = PolicyConfig()
    on_change: OnChangeConfig = OnChangeConfig()
    watch: WatchConfig = WatchConfig()
    expiry: ExpiryConfig = ExpiryConfig()
    sources: SourcesConfig = SourcesConfig()
    gateway: GatewayConfig = GatewayConfig()
    metrics: MetricsConfig = MetricsConfig()


# Keys whose values are paths, tidied (`//`, `/./`, a trailing `/`) before validation so the
# overlap rules compare like with like.


def config_path(explicit: str | None) -> tuple[str, bool]:
    """Return the config path to use and whether the user named it.

    Order: --config, then $EDGE_CERTD_CONFIG, then the default path.
    """
    if explicit:
        return explicit, True
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return from_env, True
    return DEFAULT_CONFIG_PATH, False


def load_config(explicit: str | None = None) -> tuple[Config, str]:
    """Load and validate the configuration.

    Returns:
        The config and the path it came from.

    Raises:
        ConfigError: the file named by the user is missing, or any file is invalid. Nothing
            else, whatever the file holds: the daemon keeps its running configuration at a
            reload only on ConfigError.
    """
    path, named = config_path(explicit)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        if named:
            raise ConfigError(path, ["file not found"]) from None
        return Config(), path  # no config file: every default applies
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(path, [f"larger than {MAX_BYTES} bytes; this is not a configuration"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, path), path


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate YAML text as a configuration.

    Raises:
        ConfigError: every problem found, each as "line N: key: what is wrong".
    """
    try:
        data, tree = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, ["the top level must be a mapping of keys"])
    _tidy_paths(data)
    _resolve_update_command(data)
    try:
        config = Config.model_validate(data) if _PYDANTIC_V2 else Config.parse_obj(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(part) for part in err["loc"])
            problems.append(_describe(tree, loc, _message(err)))
        raise ConfigError(path, problems) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # pydantic wraps a validator's ValueError itself; this is for anything it does not.
        raise ConfigError(path, [f"cannot be validated ({type(exc).__name__}: {exc})"]) from None
    problems = [_describe(tree, key, message) for key, message in rules.check(config)]
    if problems:
        raise ConfigError(path, problems)
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, Refused):
        return f"{where}{problem}"  # valid YAML, but nothing a configuration needs
    return f"{where}not valid YAML: {problem}"


def _tidy_paths(data: dict[str, Any]) -> None:
    for key in PATH_KEYS:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            node[key[-1]] = rules.tidy_path(node[key[-1]])
    for name in PATH_LIST_KEYS:
        if isinstance(data.get(name), list):
            data[name] = [rules.tidy_path(item) for item in data[name]]


def _resolve_update_command(data: dict[str, Any]) -> None:
    """A bare program name in trust_store.update_command becomes the path it resolves to on
    $PATH or in the sbin directories, so the same configuration works for root and for a
    user whose PATH lacks /usr/sbin. A name found nowhere is left as written."""
    section = data.get("trust_store")
    argv = section.get("update_command") if isinstance(section, dict) else None
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str):
        return
    program = argv[0]
    if not program or "/" in program:
        return
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(program, path=search)
    if found:
        argv[0] = found


def _message(err: Any) -> str:
    # pydantic 1 and 2 word "extra" differently; say it the same way either way.
    kind = str(err.get("type", ""))
    if kind in ("extra_forbidden", "value_error.extra"):
        return f"unknown key (check the spelling against {EXAMPLE_PATH})"
    return str(err["msg"])


def _describe(tree: yaml.Node | None, loc: tuple[str, ...], message: str) -> str:
    line = _line_of(tree, loc)
    where = f"line {line}: " if line else ""
    return f"{where}{'.'.join(loc)}: {message}"


def _line_of(node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
