"""`edge-certd container-args`: what a container needs to trust the gateway.

A container sees neither the host's /etc/ssl/certs nor its env file, so it gets the bundle
*directory*, bind-mounted read-only, and the variables pointing into it. The directory, not
a file: every bundle is replaced by rename (store/fsutil.write_atomic), and a file bind mount
keeps the inode it was given, so a running container would never see a new root; a directory
mount looks the name up again on every open.

The paths inside come from the same targets that write the host's env file, only rooted at
MOUNT_POINT, so the two never disagree on a file name or on whether a Java truststore exists.

What is printed is read exactly by each reader: the docker/podman line is shell-quoted
(shlex.quote: single quotes, which sh takes literally, POSIX 2.2.2), so `eval` or `sh -c`
hands docker each `-e KEY=VALUE` whole, and docker splits it at the first `=` only; the
iotedge JSON's `Env` items are the same `KEY=VALUE` strings, which Docker's API takes as
they are. The values themselves are bounded by the configuration: no control character, no
single quote, and no space or `"` in the Java password, which the JVM would split or read
as a quote inside JAVA_TOOL_OPTIONS (config/rules.py).
"""

from __future__ import annotations

import json
import shlex
from typing import Literal

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.targets.registry import followers

__all__ = ["MOUNT_POINT", "container_env", "render"]

Format = Literal["docker", "podman", "iotedge"]

# Where the bundle directory appears inside every container. A constant, not a setting:
# images and deployment manifests name it, so it must be the same on every device.
MOUNT_POINT = "/etc/edge-certd-bundles"

# Docker's and podman's --mount value is comma-separated key=value pairs, and a Binds entry
# (and -v) is colon-separated; neither has an escape, so such a host path cannot be named.
_UNSAFE_IN_MOUNT = (",", ":", "\n")

# What a container needs beyond the host's env file, each the value of a variable a target
# gives. SSL_CERT_FILE replaces OpenSSL's default roots (Python ssl, curl, Go, .NET): the
# bundle holds the host's public roots plus ours, and the image's own store knows nothing
# of ours. The JVM reads JAVA_TOOL_OPTIONS itself, so no start script expands a variable.
_CONTAINER_ALSO = {"EDGE_CERTD_CA_BUNDLE": "SSL_CERT_FILE", "EDGE_CERTD_JAVA_OPTS": "JAVA_TOOL_OPTIONS"}


def container_env(config: Config) -> list[tuple[str, str]]:
    """The variables a container needs: the targets' own (as in the env file), with paths
    under MOUNT_POINT, and the container-only ones beside the variable they copy."""
    env: list[tuple[str, str]] = []
    for target in followers(config, bundle_dir=MOUNT_POINT):
        for key, value in target.env():
            env.append((key, value))
            if key in _CONTAINER_ALSO:
                env.append((_CONTAINER_ALSO[key], value))
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
