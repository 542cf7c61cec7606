"""The configuration's shape: one frozen pydantic model per section, with the defaults.

It works with pydantic 1.10 (Debian 12) and pydantic 2 (PyPI) by touching only the API the two
share.
"""

from __future__ import annotations

from typing import Literal

import pydantic

DEFAULT_CONFIG_PATH = "/etc/edge-certd/config.yaml"
CONFIG_ENV = "EDGE_CERTD_CONFIG"

PYDANTIC_V2 = pydantic.VERSION.startswith("2")


if PYDANTIC_V2:

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
    # Where edge-certd-probe.service (a dynamic user, StateDirectory=edge-certd-probe) writes
    # what it saw; the daemon reads it from there.
    result_file: str = "/var/lib/edge-certd-probe/result.json"
    # The gateway's own certificates (server, Edge CA) warn once at each of these days left.
    warn_days: list[int] = [14, 7, 3, 1]
    # A root whose source goes away while the gateway's last probe still anchors at it stays
    # trusted this many days (or until the gateway moves to another root); 0 turns it off.
    grace_days: int = 7


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
