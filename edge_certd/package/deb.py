"""Write a roots package as a `.deb` with `dpkg-deb`, which every Debian system has.

Reproducible: the same roots, name, version and maintainer give the same bytes. Every
timestamp is SOURCE_DATE_EPOCH, the newest root's notBefore (a fact of the inputs, not of the
clock); every mode is set, not left to the umask; entries are root:root
(`--root-owner-group`); dpkg-deb sorts the members and clamps to SOURCE_DATE_EPOCH
(https://reproducible-builds.org/specs/source-date-epoch/).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile

from edge_certd.core.errors import ApplyError, UsageError, WriteError
from edge_certd.core.pem import der_to_pem
from edge_certd.core.text import printable
from edge_certd.package.plan import RootsPackage, minimum_edge_certd

__all__ = ["DEFAULT_MAINTAINER", "build_deb"]

DEFAULT_MAINTAINER = "edge-certd fleet operator <fleet-operator@edge-certd.invalid>"
_TIMEOUT = 120.0

# The package is data only: no maintainer scripts. edge-certd declares a dpkg file trigger on
# ROOTS_DIR (packaging/debian/edge-certd.triggers), so dpkg itself makes edge-certd sync once
# whenever any roots package is installed, upgraded or removed, with or without its daemon.

_COPYRIGHT = """\
Copyright {year} {maintainer}

This package was made by `edge-certd package` and holds root CA certificates, one PEM file
each, in {directory}/. A certificate authority publishes its root certificate so that
others can verify what it signs; the packaging may be copied and changed freely.

edge-certd itself is described in /usr/share/doc/edge-certd/copyright.
"""


def build_deb(package: RootsPackage, output_dir: str, maintainer: str = DEFAULT_MAINTAINER) -> str:
    """Write `output_dir/NAME_VERSION_all.deb` and return its path.

    Raises:
        UsageError: the maintainer is not `Name <address>` on one line, or dpkg-deb is
            missing. WriteError: the output directory cannot be written. ApplyError:
            dpkg-deb failed (its output is in the message).
    """
    name, address = email.utils.parseaddr(maintainer)
    if not name or "@" not in address or not maintainer.isprintable() or "," in maintainer:
        raise UsageError(f"--maintainer {maintainer!r} must be one 'Full Name <address>'")
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise UsageError("dpkg-deb is not installed (it is part of dpkg, on every Debian system)")
    epoch = max(int(ca.not_before.timestamp()) for ca in package.roots)
    target = os.path.join(output_dir, package.deb_name)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".edge-certd-package.", dir=output_dir) as work:
            tree = os.path.join(work, "tree")
            _write_tree(tree, package, maintainer, epoch)
            built = os.path.join(work, package.deb_name)
            _run_dpkg_deb([dpkg_deb, "--root-owner-group", "-Zxz", "--build", tree, built], epoch)
            os.chmod(built, 0o644)
            os.replace(built, target)
    except OSError as exc:
        raise WriteError(output_dir, exc.strerror or str(exc)) from None
    return target


def _run_dpkg_deb(argv: list[str], epoch: int) -> None:
    # LC_ALL=C: dpkg-deb's messages and sorting must not follow the caller's locale.
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"}
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ApplyError(f"dpkg-deb timed out after {_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise ApplyError(f"dpkg-deb failed (exit {result.returncode}): {output}")


def _write_tree(tree: str, package: RootsPackage, maintainer: str, epoch: int) -> None:
    roots_dir = tree + package.directory
    doc_dir = os.path.join(tree, "usr/share/doc", package.name)
    control_dir = os.path.join(tree, "DEBIAN")
    for directory in (roots_dir, doc_dir, control_dir):
        os.makedirs(directory, exist_ok=True)
    payload: dict[str, bytes] = {}
    for file_name, ca in package.files():
        payload[f"{package.directory.lstrip('/')}/{file_name}"] = der_to_pem(ca.der)
    payload[f"usr/share/doc/{package.name}/copyright"] = _COPYRIGHT.format(
        year=dt.datetime.fromtimestamp(epoch, dt.UTC).year, maintainer=maintainer, directory=package.directory
    ).encode()
    # A version with a revision is not native: Debian Policy 12.7 names its changelog so.
    changelog = "changelog.Debian.gz" if "-" in package.version else "changelog.gz"
    payload[f"usr/share/doc/{package.name}/{changelog}"] = gzip.compress(
        _changelog(package, maintainer, epoch).encode(), compresslevel=9, mtime=0
    )
    for rel, data in payload.items():
        _write(os.path.join(tree, rel), data, 0o644)
    md5sums = "".join(f"{hashlib.md5(payload[rel]).hexdigest()}  {rel}\n" for rel in sorted(payload))
    _write(os.path.join(control_dir, "md5sums"), md5sums.encode(), 0o644)
    _write(os.path.join(control_dir, "control"), _control(package, maintainer, payload).encode(), 0o644)
    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        for entry in filenames:
            os.utime(os.path.join(dirpath, entry), (epoch, epoch), follow_symlinks=False)
        for entry in dirnames:
            os.chmod(os.path.join(dirpath, entry), 0o755)
            os.utime(os.path.join(dirpath, entry), (epoch, epoch), follow_symlinks=False)
    os.chmod(tree, 0o755)
    os.utime(tree, (epoch, epoch))


def _write(path: str, data: bytes, mode: int) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _line(text: str, width: int) -> str:
    """One control-file-safe line: printable, no leading space or dot trick, at most `width`."""
    text = printable(text, limit=4096).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _control(package: RootsPackage, maintainer: str, payload: dict[str, bytes]) -> str:
    # Installed-Size in KiB, counted as dpkg-gencontrol does: each file rounded up, plus one
    # for each directory.
    size = sum((len(data) + 1023) // 1024 for data in payload.values())
    directories = {os.path.dirname(rel) for rel in payload}
    size += len({"/".join(d.split("/")[: i + 1]) for d in directories for i in range(d.count("/") + 1)})
    roots = "\n".join(f"  {ca.sha256[:16]}  {_line(ca.subject, 60)}" for _, ca in package.files())
    return (
        f"Package: {package.name}\n"
        f"Version: {package.version}\n"
        "Architecture: all\n"
        f"Maintainer: {maintainer}\n"
        f"Installed-Size: {size}\n"
        f"Depends: edge-certd (>= {minimum_edge_certd()})\n"
        "Section: misc\n"
        "Priority: optional\n"
        "Multi-Arch: foreign\n"
        "Description: gateway root CAs that edge-certd trusts\n"
        " While this package is installed, edge-certd trusts the root CA certificates\n"
        " it puts in\n"
        f"  {package.directory}/\n"
        " in the system store, the runtime bundles and the Java truststore. An upgrade\n"
        " that adds a root trusts both; one that leaves a root out stops trusting it;\n"
        " removing the package removes its roots, unless another source still provides\n"
        " one.\n"
        " .\n"
        " Roots (SHA-256 prefix, subject):\n"
        f"{roots}\n"
    )


def _changelog(package: RootsPackage, maintainer: str, epoch: int) -> str:
    date = email.utils.format_datetime(dt.datetime.fromtimestamp(epoch, dt.UTC))  # RFC 2822, +0000
    entries = "\n".join(f"  * Root {ca.sha256[:16]}: {_line(ca.subject, 50)}" for _, ca in package.files())
    return (
        f"{package.name} ({package.version}) stable; urgency=medium\n\n"
        f"{entries}\n\n"
        f" -- {maintainer}  {date}\n"
    )
