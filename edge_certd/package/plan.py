"""What a roots package holds: its name and version checked, each input judged by the drop
directory's policy (in the judge worker; nothing is built when any is refused), and the
Device Update manifest that describes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_certd.config import Config
from edge_certd.core.errors import UsageError
from edge_certd.core.model import Reason, Rejection, TrustedCA
from edge_certd.core.plan import file_name
from edge_certd.package.protected import DPKG_TEMPORARY_SUFFIXES, PROTECTED
from edge_certd.sync.operations import judge_as_drop

# Where every roots package installs, whatever the building machine's configuration says: the
# devices run the packaged default (config.package_roots_dir). Under /usr/share, because the
# files are dpkg's and read-only, as the FHS says of package data.
ROOTS_DIR = "/usr/share/edge-certd/roots.d"

# Debian Policy 5.6.1: lower case letters, digits, '+', '-', '.'; two characters at least,
# starting with a letter or digit.
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Debian Policy 5.6.12: [epoch:]upstream_version[-debian_revision]; the upstream part starts
# with a digit. No '=' can appear, which Device Update's apt manifest also requires.
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~-]*[A-Za-z0-9.+~])?")
_MAX_NAME = 100  # a file name is NAME_VERSION_all.deb; keep it well below 255


@dataclass(frozen=True, kw_only=True)
class RootsPackage:
    """What one roots package holds: its name, its version and its roots, in file order."""

    name: str
    version: str
    roots: tuple[TrustedCA, ...]

    @property
    def directory(self) -> str:
        return f"{ROOTS_DIR}/{self.name}"

    @property
    def deb_name(self) -> str:
        """`NAME_VERSION_all.deb`, the epoch left out as dpkg-name does (a ':' in a file name
        breaks scp and Windows shares)."""
        return f"{self.name}_{self.version.partition(':')[2] or self.version}_all.deb"

    def files(self) -> list[tuple[str, TrustedCA]]:
        """(file name, root) in name order: `<CN slug>-<sha256[:16]>.pem`, as ca_dir names them."""
        return sorted((file_name(ca).removesuffix(".crt") + ".pem", ca) for ca in self.roots)


def check_name(name: str) -> None:
    """Raises: UsageError: not a Debian package name, edge-certd's own, one the device
    needs (package/protected.py), or one ending like dpkg's temporary names."""
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise UsageError(
            f"--name {name!r} is not a Debian package name: lower-case letters, digits, '+', '-' "
            f"and '.', starting with a letter or digit, 2 to {_MAX_NAME} characters "
            "(e.g. contoso-gateway-roots)"
        )
    if name == "edge-certd" or name.startswith("edge-certd-build"):
        raise UsageError(f"--name {name!r} is edge-certd's own; name the roots (e.g. contoso-gateway-roots)")
    if name in PROTECTED:
        raise UsageError(
            f"--name {name!r} is a package Debian or the device needs (essential, required, or "
            "part of what decides trust); a roots package of that name would replace it on every "
            "device that installs it; name the roots (e.g. contoso-gateway-roots)"
        )
    if name.endswith(DPKG_TEMPORARY_SUFFIXES):
        raise UsageError(
            f"--name {name!r} ends like a name dpkg uses for its temporary files, which edge-certd "
            "never reads as a source; name the roots (e.g. contoso-gateway-roots)"
        )


def check_version(version: str) -> None:
    """Raises: UsageError: not a Debian version."""
    if not _VERSION.fullmatch(version):
        raise UsageError(
            f"--version {version!r} is not a Debian version: [epoch:]upstream[-revision], the "
            "upstream part starting with a digit, from letters, digits and '.+~' (e.g. 2 or "
            "2024.06.1)"
        )


def plan_package(config: Config, files: Sequence[str], name: str, version: str) -> RootsPackage:
    """Judge `files` as a drop would and say what the package would hold.

    Raises:
        UsageError: a bad name or version, or a file refused or holding no CA; the message
            names every such file and why.
    """
    check_name(name)
    check_version(version)
    if not files:
        raise UsageError("name at least one root CA file to package")
    verdicts = judge_as_drop(config, files)
    refused: list[str] = []
    for verdict in verdicts:
        if verdict.rejected:
            refused.extend(_refusal(r) for r in verdict.rejected)
        elif not verdict.accepted:
            refused.append(f"{verdict.source}: holds no CA certificate")
    if refused:
        raise UsageError("nothing was packaged:\n  " + "\n  ".join(refused))
    unique = {ca.sha256: ca for verdict in verdicts for ca in verdict.accepted}
    return RootsPackage(name=name, version=version, roots=tuple(unique[sha] for sha in sorted(unique)))


def _refusal(rejection: Rejection) -> str:
    # The drop directory's advice ("copy the root CA instead") does not fit a package.
    if rejection.code in (Reason.NOT_CA, Reason.NOT_SELF_SIGNED):
        what = (
            "a leaf (server or device) certificate"
            if rejection.code is Reason.NOT_CA
            else "an intermediate CA"
        )
        return (
            f"{rejection.source}: certificate {rejection.subject} is {what}, and a roots package takes "
            "root CA certificates only: package the root CA that issued it"
        )
    return rejection.describe()


# The first edge-certd version that reads package_roots_dir (commit 427a3f6, under 0.1.0, the
# first entry of packaging/debian/changelog; tests/test_packaging.py checks it is there). Not
# the builder's version: a package built by a newer edge-certd installs beside any that reads it.
ROOTS_D_SINCE = "0.1.0"


def minimum_edge_certd() -> str:
    """The version a roots package's `Depends: edge-certd (>= ...)` names: ROOTS_D_SINCE."""
    return ROOTS_D_SINCE


def du_manifest(package: RootsPackage) -> dict[str, Any]:
    """The Device Update for IoT Hub apt manifest that installs this package version.

    Its documented fields (https://learn.microsoft.com/azure/iot-hub-device-update/
    device-update-apt-manifest): `name` and `version` of the manifest, and `packages`, each
    with `name` and an exact `version` (no '='). The device's apt sources must reach the
    repository that serves the package.
    """
    return {
        "name": package.name,
        "version": package.version,
        "packages": [{"name": package.name, "version": package.version}],
    }
