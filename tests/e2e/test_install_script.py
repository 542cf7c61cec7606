"""`sudo ./install` on a fresh Debian 12, in a booted container: it builds the package from
packaging/debian/control's Build-Depends, installs and starts it, and leaves behind no package
that only the build needed.

It runs in its own container (tests/support/nspawn.py, an overlay on the cached root), never on this
machine: ./install would put edge-certd into the machine's own trust store. Slow: apt fetches
build-essential, debhelper and the rest from the archive.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.nspawn import Container, booted, copy_checkout

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SRC = "/srv/src"  # inside the container

# Packages only a build needs; none may be left once ./install is done.
BUILD_ONLY = (
    "edge-certd-build-deps",
    "build-essential",
    "devscripts",
    "equivs",
    "make",
    "gcc",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-pytest",
    "python3-hypothesis",
)


def _copy_source(merged: Path) -> None:
    copy_checkout(REPO, merged / SRC.lstrip("/"))


def _installed(box: Container) -> set[str]:
    out = box.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n"]).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("ii ")}


def _listed_after(heading: str, out: str) -> set[str]:
    """The indented package names ./install prints under one of its headings."""
    names: set[str] = set()
    lines = out.splitlines()
    if heading not in lines:
        return names
    for line in lines[lines.index(heading) + 1 :]:
        if not line.startswith("  "):
            break
        names.add(line.strip())
    return names


def test_install_script_starts_the_service_and_purges_build_only_packages(
    cached_root: Callable[..., Path],
) -> None:
    lower = cached_root()
    before_boot: Callable[[Path], None] = _copy_source
    with booted(lower, before_boot) as box:
        before = _installed(box)
        assert not before & set(BUILD_ONLY), "the cached root must not hold build tools"

        r = box.run([f"{SRC}/install"], check=False, timeout=1800)
        assert r.returncode == 0, f"./install exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        print(r.stdout[-3000:])

        after = _installed(box)
        assert "edge-certd" in after
        assert box.run(["systemctl", "is-active", "edge-certd"], check=False).stdout.strip() == "active"
        assert before <= after, f"./install removed packages it found: {sorted(before - after)}"
        left = after & set(BUILD_ONLY)
        assert not left, f"build-only packages left behind: {sorted(left)}"
        # Whatever is new is needed by edge-certd: apt would remove none of it.
        autoremove = box.run(["apt-get", "-s", "autoremove", "--purge"]).stdout
        would_go = {ln.split()[1] for ln in autoremove.splitlines() if ln.startswith("Purg ")}
        assert not would_go & (after - before), sorted(would_go & (after - before))

        purged = _listed_after("install: installed for the build and purged again:", r.stdout)
        kept = _listed_after("install: installed and kept (edge-certd and what it depends on):", r.stdout)
        assert {"devscripts", "debhelper", "edge-certd-build-deps"} <= purged, purged
        assert kept == after - before, (sorted(kept), sorted(after - before))
