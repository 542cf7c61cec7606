"""`edge-certd container-args`: what a container needs to trust the gateway.

A container sees neither the host's /etc/ssl/certs nor its env file, so it gets the bundle
*directory*, bind-mounted read-only, and the variables pointing into it. The directory, not
a file: every bundle is replaced by rename (store/fsutil.write_atomic), and a file bind mount
keeps the inode it was given, so a running container would never see a new root; a directory
mount looks the name up again on every open.

The paths inside come from the same targets that write the host's env file, only rooted at
MOUNT_POINT, so the two never disagree on a file name or on whether a Java truststore exists.
"""

from __future__ import annotations

import json
import shlex
from typing import Literal

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.targets.bundles import RuntimeBundles
from edge_certd.targets.java import JavaTruststore

__all__ = ["FORMATS", "MOUNT_POINT", "container_env", "render"]

Format = Literal["docker", "podman", "iotedge"]
FORMATS: tuple[Format, ...] = ("docker", "podman", "iotedge")

# Where the bundle directory appears inside every container. A constant, not a setting:
# images and deployment manifests name it, so it must be the same on every device.
MOUNT_POINT = "/etc/edge-certd-bundles"

# Docker's and podman's --mount value is comma-separated key=value pairs, and a Binds entry
# (and -v) is colon-separated; neither has an escape, so such a host path cannot be named.
_UNSAFE_IN_MOUNT = (",", ":", "\n")


def container_env(config: Config) -> list[tuple[str, str]]:
    """The variables a container needs, with paths under MOUNT_POINT."""
    bundles = RuntimeBundles(bundle_dir=MOUNT_POINT, system_bundle=config.trust_store.system_bundle)
    java = JavaTruststore(
        mode=config.bundles.java,
        bundle_dir=MOUNT_POINT,
        system_bundle=config.trust_store.system_bundle,
        password=config.bundles.java_password,
    )
    env = [
        ("NODE_EXTRA_CA_CERTS", bundles.edge_roots),
        # Replaces OpenSSL's default roots (Python ssl, curl, Go, .NET): the bundle holds the
        # host's public roots plus ours, because the image's own store knows nothing of ours.
        ("SSL_CERT_FILE", bundles.ca_bundle),
        ("REQUESTS_CA_BUNDLE", bundles.ca_bundle),
        ("EDGE_CERTD_ROOTS", bundles.edge_roots),
        ("EDGE_CERTD_CA_BUNDLE", bundles.ca_bundle),
    ]
    java_env = dict(java.env())
    if "EDGE_CERTD_JAVA_OPTS" in java_env:
        # The JVM reads JAVA_TOOL_OPTIONS itself, so no start script has to expand a variable.
        env.append(("JAVA_TOOL_OPTIONS", java_env["EDGE_CERTD_JAVA_OPTS"]))
        env += sorted(java_env.items())
    return env


def render(config: Config, fmt: Format) -> str:
    """The text `container-args --format FMT` prints.

    docker and podman: one line of shell-quoted `docker run`/`podman run` arguments (both take
    the same `--mount` syntax). iotedge: the module's createOptions as JSON.

    Raises:
        UsageError: bundles.dir holds a character that no mount syntax can carry.
    """
    host_dir = config.bundles.dir
    bad = [c for c in _UNSAFE_IN_MOUNT if c in host_dir]
    if bad:
        raise UsageError(
            f"bundles.dir {host_dir!r} holds {' and '.join(repr(c) for c in bad)}, which the "
            "container runtimes' mount syntax cannot carry; choose a directory without them"
        )
    env = container_env(config)
    if fmt == "iotedge":
        options = {
            "HostConfig": {"Binds": [f"{host_dir}:{MOUNT_POINT}:ro"]},
            "Env": [f"{key}={value}" for key, value in env],
        }
        return json.dumps(options, indent=2)
    words = ["--mount", f"type=bind,src={host_dir},dst={MOUNT_POINT},readonly"]
    for key, value in env:
        words += ["-e", f"{key}={value}"]
    return " ".join(shlex.quote(word) for word in words)
