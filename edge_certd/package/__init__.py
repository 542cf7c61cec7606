"""`edge-certd package`: roots in, a Debian package out, that a fleet installs with apt.

The package puts one PEM per root in `ROOTS_DIR/<name>/`, a source directory the daemon
watches; installing, upgrading and removing the package is how a fleet rotates a gateway's
root.

- `plan`: the name, the version and the judged roots (`RootsPackage`), and the Device
  Update manifest;
- `deb`: the reproducible `.deb`, written with `dpkg-deb`;
- `deviceupdate`: Device Update for IoT Hub's apt manifest and import manifest v5 files.
"""

from edge_certd.package.plan import (
    ROOTS_DIR,
    RootsPackage,
    check_name,
    check_version,
    du_manifest,
    minimum_edge_certd,
    plan_package,
)

__all__ = [
    "ROOTS_DIR",
    "RootsPackage",
    "check_name",
    "check_version",
    "du_manifest",
    "minimum_edge_certd",
    "plan_package",
]
