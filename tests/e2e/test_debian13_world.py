"""Debian 13's own world: lintian of trixie on the .deb, and the unit suite on trixie's packages.

The host is Debian 12, so its lintian and /usr/bin/python3 only speak for Debian 12. Here a
booted trixie container (tests/support/nspawn.py, an overlay on the cached trixie root with
SUITE_PACKAGES installed once, when the cache is built) checks the same .deb that
test_container.py installs with trixie's lintian, and runs the unit suite on Python 3.13 with
trixie's python3-pydantic 2, python3-cryptography, python3-watchdog and python3-systemd.

Needs what test_container.py needs. With CI=true a missing tool fails, as in tests/run-all.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.nspawn import SUITE_PACKAGES, Container, booted, copy_checkout

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RELEASE = "trixie"
SRC = "/srv/src"  # inside the container
DEBS = "/srv/debs"
# Services SUITE_PACKAGES enable: the container shares the host's network, so they would take
# the host's ports 1883 and 9090 from whatever else runs there. The tests start their own.
MASKED = ("mosquitto.service", "prometheus.service", "prometheus-node-exporter.service")


@pytest.fixture(scope="module")
def box(built_deb: Path, cached_root: Callable[..., Path]) -> Iterator[Container]:
    lower = cached_root(RELEASE, SUITE_PACKAGES)

    def prepare(merged: Path) -> None:
        for unit in MASKED:
            (merged / "etc/systemd/system" / unit).symlink_to("/dev/null")
        copy_checkout(REPO, merged / SRC.lstrip("/"))
        debs = merged / DEBS.lstrip("/")
        debs.mkdir(parents=True)
        shutil.copy2(built_deb, debs / built_deb.name)

    with booted(lower, prepare) as c:
        yield c


def test_trixie_lintian_reports_no_errors_or_warnings(box: Container, built_deb: Path) -> None:
    # The same flags as test_container.py's host (Debian 12) lintian; trixie's knows newer tags.
    version = box.run(["lintian", "--version"]).stdout.strip()
    r = box.run(
        ["lintian", "--fail-on", "error,warning", "--pedantic", "--display-info", f"{DEBS}/{built_deb.name}"],
        check=False,
    )
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    print(f"{version}:\n{r.stdout}")
    assert r.returncode == 0 and not tags, r.stdout + r.stderr


def test_unit_suite_passes_on_trixies_python_packages(box: Container) -> None:
    versions = box.run(
        ["python3", "-c", "import sys, cryptography, pydantic, watchdog.version; "
         "print(f'Debian 13 world: Python {sys.version.split()[0]}, pydantic {pydantic.VERSION}, "
         "cryptography {cryptography.__version__}, watchdog {watchdog.version.VERSION_STRING}')"],
    ).stdout  # fmt: skip
    assert re.search(r"Python 3\.13\.\S+, pydantic 2\.", versions), versions
    # As tests/run-all runs it on the host: as root, CI=true so that a missing tool fails.
    r = box.run(
        ["sh", "-c", f"cd {SRC} && tests/unit-suite python3"],
        env={"CI": "true", "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
        timeout=2400,
    )
    # One summary line for the parallel part, one for the serial part.
    summary = [ln for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    print(versions.strip(), *summary, sep="\n")
    assert r.returncode == 0, f"the suite failed on trixie:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
