"""Device Update for IoT Hub: the two files that publish a roots package through it.

Device Update does not carry the `.deb`: its apt handler (`microsoft/apt:1`) runs apt on the
device, which fetches the package from the apt repository the device already uses. What is
imported is the *apt manifest* (the package name and its exact version) and the *import
manifest v5* that describes it: the update's identity, the devices it fits, one step for
the apt handler, and the apt manifest's size and SHA-256.

Sources for each rule:
- import manifest v5: https://learn.microsoft.com/azure/iot-hub-device-update/import-schema
  and its JSON schema https://json.schemastore.org/azure-deviceupdate-import-manifest-5.0.json
  (with azure-deviceupdate-manifest-definitions-5.0.json; the tests validate against a copy
  in tests/data/deviceupdate/);
- apt manifest and its installedCriteria `<name>-<version>`:
  https://learn.microsoft.com/azure/iot-hub-device-update/device-update-apt-manifest
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from edge_certd.core.errors import UsageError, WriteError
from edge_certd.core.text import iso, printable
from edge_certd.package.plan import RootsPackage, du_manifest
from edge_certd.store.fsutil import fsync_directory, write_atomic

__all__ = [
    "APT_HANDLER",
    "DeviceUpdateTarget",
    "check_target",
    "import_manifest",
    "installed_criteria",
    "manifest_bytes",
    "update_version",
    "write_manifests",
]

APT_HANDLER = "microsoft/apt:1"
MANIFEST_VERSION = "5.0"
# SchemaStore's catalog offers the import manifest schema to editors for `*.importmanifest.json`.
IMPORT_SUFFIX = ".importmanifest.json"
APT_SUFFIX = ".apt-manifest.json"

# updateId.provider and updateId.name: the definitions schema's pattern and length.
_IDENTIFIER = re.compile(r"[A-Za-z0-9.-]{1,64}")
# updateId.version: "Two to four part dot separated numerical version numbers. Each part must
# be a number between 0 and 2147483647 and leading zeroes will be dropped." No leading zero
# here: Device Update would drop it, and the two versions would no longer read the same.
_PART_MAX = 2147483647
_COMPATIBILITY_MAX = 64  # a compatibility value: 1 to 64 characters
_DESCRIBED_ROOTS = 8  # the description (at most 512 characters) names this many fingerprints


@dataclass(frozen=True, kw_only=True)
class DeviceUpdateTarget:
    """Who publishes the update and which devices it fits: `manufacturer` and `model` are
    compared with what each device's Device Update agent reports (its du-config.json)."""

    provider: str
    manufacturer: str
    model: str


def check_target(provider: str | None, manufacturer: str | None, model: str | None) -> DeviceUpdateTarget:
    """Raises: UsageError: a value missing, or one Device Update would refuse at import."""
    if provider is None or manufacturer is None or model is None:
        flags = (("--du-provider", provider), ("--du-manufacturer", manufacturer), ("--du-model", model))
        raise UsageError(
            "--du-import needs "
            + ", ".join(flag for flag, value in flags if value is None)
            + ": the provider is who publishes the update (e.g. Contoso); the manufacturer and "
            "model are what the devices' Device Update agent reports (its du-config.json), so "
            "that the update is offered to them"
        )
    if not _IDENTIFIER.fullmatch(provider):
        raise UsageError(
            f"--du-provider {_shown(provider)} can't be Device Update's updateId.provider: 1 to 64 "
            "letters, digits, '.' and '-' (e.g. Contoso)"
        )
    for flag, value in (("--du-manufacturer", manufacturer), ("--du-model", model)):
        if not 1 <= len(value) <= _COMPATIBILITY_MAX or not value.isprintable() or value != value.strip():
            raise UsageError(
                f"{flag} {_shown(value)} can't be a Device Update compatibility value: 1 to "
                f"{_COMPATIBILITY_MAX} printable characters, no space at either end, exactly as the "
                "devices' du-config.json says it"
            )
    return DeviceUpdateTarget(provider=provider, manufacturer=manufacturer, model=model)


def update_version(package: RootsPackage) -> str:
    """The package's version as Device Update's updateId.version: the same string, or a refusal.

    Only an exact match is taken. A Debian version with an epoch (`1:3.0`), a revision
    (`3.0-2`), letters (`3.0~rc1`) or one part (`3`) has no faithful form there: turning
    `3.0-2` into `3.0.2` would give a different package (Debian's 3.0.2) the same update, and
    Device Update orders updates by this version.

    Raises: UsageError: the version cannot be Device Update's, or the package name cannot be
        its updateId.name.
    """
    if not _IDENTIFIER.fullmatch(package.name):
        raise UsageError(
            f"--name {_shown(package.name)} can't be Device Update's updateId.name, which is 1 to 64 "
            "letters, digits, '.' and '-' ('+' is not allowed): name the package without '+' "
            "(e.g. contoso-gateway-roots)"
        )
    version = package.version
    why = _why_not_update_version(version)
    if why is None:
        return version
    advice = (
        f"build it as {version}.0 (dpkg orders {version}.0 after {version})"
        if version.isdigit() and len(version) <= 10
        else ""
    )
    raise UsageError(
        f"--version {_shown(version)} can't be used with Device Update: its update version is 2 to 4 "
        f"dot-separated numbers (e.g. 3.0 or 2026.12.1), and {why}. "
        + (advice or "Build the roots package with such a version")
        + ", or leave out --du-import"
    )


def _shown(value: str) -> str:
    """A value from the command line, quoted, escaped and cut for a one-line message."""
    return f"'{printable(value, 64)}'"


def _why_not_update_version(version: str) -> str | None:
    """Why `version` is not exactly a Device Update version, or None when it is one."""
    parts = version.split(".")
    if ":" in version or "-" in version:
        return "an epoch ('N:') or a Debian revision ('-N') has no place in it"
    if not all(part.isascii() and part.isdigit() for part in parts):
        return "it holds more than digits and dots"
    if len(parts) == 1:
        return "it has one part only"
    if len(parts) > 4:
        return f"it has {len(parts)} parts"
    if any(len(part) > 1 and part.startswith("0") for part in parts):
        return "a part has a leading zero, which Device Update would drop"
    # Ten digits at most before int(): a longer part is too large anyway, and int() of a
    # very long string is refused (sys.int_info.default_max_str_digits).
    if any(len(part) > len(str(_PART_MAX)) or int(part) > _PART_MAX for part in parts):
        return f"a part is above {_PART_MAX}"
    return None


def installed_criteria(package: RootsPackage) -> str:
    """`<apt manifest name>-<apt manifest version>`, what Microsoft documents for the apt
    handler; the agent records it once apt has installed the package."""
    return f"{package.name}-{package.version}"


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """A manifest as the bytes written to its file (and hashed in the import manifest)."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def file_names(package: RootsPackage) -> tuple[str, str]:
    """(apt manifest, import manifest) file names: `NAME_VERSION` as the `.deb` is named, so
    that the files of several versions can sit in one directory."""
    stem = package.deb_name.removesuffix("_all.deb")
    return stem + APT_SUFFIX, stem + IMPORT_SUFFIX


def import_manifest(
    package: RootsPackage, target: DeviceUpdateTarget, apt_manifest: bytes, created: dt.datetime
) -> dict[str, Any]:
    """The import manifest v5 for `package`, whose apt manifest file holds `apt_manifest`.

    Raises: UsageError: as update_version.
    """
    apt_name, _ = file_names(package)
    shown = ", ".join(ca.sha256[:16] for ca in package.roots[:_DESCRIBED_ROOTS])
    more = len(package.roots) - _DESCRIBED_ROOTS
    return {
        "updateId": {"provider": target.provider, "name": package.name, "version": update_version(package)},
        "description": (
            f"edge-certd roots package {package.name} {package.version}: {len(package.roots)} root CA(s), "
            f"SHA-256 {shown}" + (f" and {more} more" if more > 0 else "")
        ),
        "compatibility": [{"manufacturer": target.manufacturer, "model": target.model}],
        "instructions": {
            "steps": [
                {
                    "type": "inline",
                    "handler": APT_HANDLER,
                    "files": [apt_name],
                    "handlerProperties": {"installedCriteria": installed_criteria(package)},
                }
            ]
        },
        "files": [
            {
                "filename": apt_name,
                "sizeInBytes": len(apt_manifest),
                "hashes": {"sha256": base64.b64encode(hashlib.sha256(apt_manifest).digest()).decode()},
            }
        ],
        "createdDateTime": iso(created.replace(microsecond=0)),
        "manifestVersion": MANIFEST_VERSION,
    }


def write_manifests(
    package: RootsPackage, target: DeviceUpdateTarget, output_dir: str, created: dt.datetime
) -> tuple[str, str]:
    """Write the apt manifest and the import manifest into `output_dir`; return their paths.

    Raises: UsageError: as update_version. WriteError: the directory cannot be written.
    """
    apt_bytes = manifest_bytes(du_manifest(package))
    import_bytes = manifest_bytes(import_manifest(package, target, apt_bytes, created))
    apt_path, import_path = (os.path.join(output_dir, name) for name in file_names(package))
    try:
        os.makedirs(output_dir, exist_ok=True)
        write_atomic(apt_path, apt_bytes, sync_directory=False)
        write_atomic(import_path, import_bytes, sync_directory=False)
        fsync_directory(output_dir)
    except OSError as exc:
        raise WriteError(output_dir, exc.strerror or str(exc)) from None
    return apt_path, import_path
