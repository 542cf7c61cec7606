"""What the e2e modules share: the .deb, built once per session and installed on every release,
and the cached root each boots (tests/support/nspawn.py holds the machinery)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from support import nspawn
from support.nspawn import SBIN_PATH, unavailable

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("make", "dpkg-buildpackage", "dh", "dh_python3")


@pytest.fixture(scope="session")
def built_deb() -> Path:
    """`make deb` once for the whole e2e run; the .deb it put into dist/.

    Built on this machine (Debian 12) and installed unchanged on Debian 12 and 13: an
    Architecture: all package whose Depends dh_python3 wrote without an upper bound on Python.
    EDGE_CERTD_E2E_DEB names one built already (tests/run-all builds it once for all its
    e2e steps, each a pytest run of its own).
    """
    prebuilt = os.environ.get("EDGE_CERTD_E2E_DEB")
    if prebuilt:
        assert Path(prebuilt).is_file(), f"EDGE_CERTD_E2E_DEB={prebuilt} is not a file"
        return Path(prebuilt).resolve()
    missing = [t for t in BUILD_TOOLS if not shutil.which(t, path=SBIN_PATH)]
    if missing:
        unavailable(f"missing {', '.join(missing)}; run `make build-deps` as root")
    build = subprocess.run(["make", "deb"], cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, f"make deb failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    debs = sorted((REPO / "dist").glob("edge-certd_*_all.deb"))
    assert len(debs) == 1, f"expected one .deb in dist/, found {debs}"
    return debs[0]


@pytest.fixture(scope="session")
def cached_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """cached_root(release="bookworm", extra=()): the pristine root to boot an overlay on.

    Built once per machine (debootstrap, then apt for `extra`) and cached; skips, or fails
    in CI, where no container can boot here.
    """
    log_dir = tmp_path_factory.mktemp("debootstrap")

    def get(release: str = "bookworm", extra: Sequence[str] = ()) -> Path:
        return nspawn.cached_root(log_dir, release, extra)

    return get
