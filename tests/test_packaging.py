"""The Debian packaging agrees with the code: version, journal catalog, shipped conffile.

These read the source files as text (regular expressions, not imports), so they hold whatever
the package's module layout is, and they run during the package build (debian/rules'
override_dh_auto_test) as well as in CI. No root, no network, nothing outside temp dirs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]
CATALOG = TOP / "systemd" / "edge-certd.catalog"
CONFFILE = TOP / "packaging" / "config.yaml"
IN_CI = os.environ.get("CI") == "true"

# Where the MESSAGE_IDS dict lives, newest layout first.
MESSAGE_ID_MODULES = ("edge_certd/sync/journal.py", "edge_certd/journal.py", "edge_certd/events.py")


def _changelog() -> Path:
    # In the repository it is packaging/debian/changelog; in the tree dpkg-buildpackage builds
    # from (build/deb/edge-certd-<version>/), packaging/debian has been copied to debian/.
    for candidate in (TOP / "packaging" / "debian" / "changelog", TOP / "debian" / "changelog"):
        if candidate.exists():
            return candidate
    raise AssertionError("no packaging/debian/changelog")


def code_version(init_py: str) -> str:
    m = re.search(r'^__version__ = "([^"]+)"$', init_py, re.M)
    assert m, 'no __version__ = "..." line in edge_certd/__init__.py'
    return m.group(1)


def changelog_top_version(changelog: str) -> str:
    """The version of the first entry: `source (version) distribution; urgency=...`."""
    m = re.match(r"([a-z0-9][a-z0-9.+-]+) \(([^()\s]+)\) [^;]+;", changelog)
    assert m, f"the changelog does not start with an entry header: {changelog[:80]!r}"
    return m.group(2)


def code_message_ids(source: str) -> dict[str, str]:
    """event name -> MESSAGE_ID, from the MESSAGE_IDS = {...} literal of a module's text."""
    m = re.search(r"^MESSAGE_IDS\b[^=\n]*=\s*\{(.*?)^\}", source, re.M | re.S)
    assert m, "no MESSAGE_IDS = {...} dict"
    return dict(re.findall(r'"(\w+)":\s*"([0-9a-f]{32})"', m.group(1)))


def catalog_entries(text: str) -> dict[str, str]:
    """MESSAGE_ID -> the entry's text (headers and body), from a journal catalog file."""
    parts = re.split(r"^-- ([0-9a-f]{32})[ \t]*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _message_id_module() -> Path:
    for rel in MESSAGE_ID_MODULES:
        if (TOP / rel).exists():
            return TOP / rel
    raise AssertionError(f"MESSAGE_IDS is in none of {MESSAGE_ID_MODULES}")


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


# -- the version --------------------------------------------------------------------------------


def test_changelog_top_entry_is_the_code_version() -> None:
    version = code_version((TOP / "edge_certd" / "__init__.py").read_text())
    assert changelog_top_version(_changelog().read_text()) == version


def test_a_changelog_behind_the_code_is_caught() -> None:
    older = (
        "edge-certd (0.0.9) unstable; urgency=medium\n\n  * Old.\n\n"
        " -- A <a@b.example>  Mon, 1 Jan 2024 00:00:00 +0000\n"
    )
    assert changelog_top_version(older) != code_version('__version__ = "0.1.0"\n')


def test_dpkg_reads_the_same_changelog_version() -> None:
    out = subprocess.run(
        [_tool("dpkg-parsechangelog"), "-l", str(_changelog()), "-S", "Version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == changelog_top_version(_changelog().read_text())


# -- the journal catalog ------------------------------------------------------------------------


def test_catalog_has_one_entry_per_message_id_in_the_code() -> None:
    ids = code_message_ids(_message_id_module().read_text())
    assert ids, "MESSAGE_IDS is empty"
    assert len(set(ids.values())) == len(ids), f"two events share a MESSAGE_ID: {ids}"
    assert set(catalog_entries(CATALOG.read_text())) == set(ids.values())


def test_a_catalog_missing_an_event_is_caught() -> None:
    ids = code_message_ids(_message_id_module().read_text())
    text = CATALOG.read_text()
    first = next(iter(ids.values()))
    without_first = re.sub(rf"^-- {first}$", "-- " + "0" * 32, text, flags=re.M)
    assert set(catalog_entries(without_first)) != set(ids.values())


def test_message_ids_are_random_not_made_up() -> None:
    # `systemd-id128 new` makes RFC 4122 version 4 IDs; hand-made sequential ones are not.
    for event, mid in code_message_ids(_message_id_module().read_text()).items():
        assert mid[12] == "4" and mid[16] in "89ab", f"{event}: {mid} is not from systemd-id128 new"


def test_every_catalog_entry_has_the_headers_and_a_body() -> None:
    for mid, entry in catalog_entries(CATALOG.read_text()).items():
        headers, _, body = entry.strip("\n").partition("\n\n")
        fields = dict(line.split(": ", 1) for line in headers.splitlines())
        assert fields.get("Subject"), mid
        assert fields.get("Defined-By") == "edge-certd", mid
        assert fields.get("Documentation") == "man:edge-certd(8)", mid
        assert fields.get("Support"), mid
        assert len(body.split()) >= 20, f"{mid}: the body should say what happened and what to do"


def catalog_fields(text: str) -> set[str]:
    """The @FIELD@ names a catalog text uses, as systemd's replace_var() would see them."""
    return set(re.findall(r"@([^@\s]+)@", text))


def test_catalog_uses_only_fields_journalctl_can_fill_in() -> None:
    # systemd substitutes @NAME@ only for names of capital letters and underscores; any other
    # name (@CERT_SHA256@, with digits) is printed as it stands.
    # Lines starting with # are comments to journalctl, wherever they are.
    text = "\n".join(ln for ln in CATALOG.read_text().splitlines() if not ln.startswith("#"))
    assert catalog_fields(text), "the catalog names no fields at all"
    for name in catalog_fields(text):
        assert re.fullmatch(r"[A-Z_]+", name), f"@{name}@ is never filled in by journalctl"


def test_a_field_name_with_digits_is_caught() -> None:
    assert not all(re.fullmatch(r"[A-Z_]+", n) for n in catalog_fields("SHA-256 @CERT_SHA256@"))


def test_journalctl_compiles_the_catalog(tmp_path: Path) -> None:
    # The same compile the systemd package's dpkg trigger runs, in a scratch root.
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(CATALOG, catalog_dir)
    journalctl = _tool("journalctl")
    subprocess.run([journalctl, f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--list-catalog"], check=True, capture_output=True, text=True
    ).stdout
    ids = set(code_message_ids(_message_id_module().read_text()).values())
    assert {line.split()[0] for line in listed.splitlines() if line.strip()} == ids


# -- the conffile -------------------------------------------------------------------------------


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_certd", "--config", str(path), "check-config"],
        cwd=TOP,
        capture_output=True,
        text=True,
    )


def test_shipped_conffile_is_valid_as_it_is() -> None:
    r = _check_config(CONFFILE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_conffile_with_its_examples_uncommented_is_valid(tmp_path: Path) -> None:
    # The commented-out keys are what a device is told to set; they must work once uncommented.
    uncommented = re.sub(r"^#(?=[a-z_]+:|  [a-z_]+:)", "", CONFFILE.read_text(), flags=re.M)
    assert uncommented != CONFFILE.read_text(), "the conffile shows no example keys"
    (tmp_path / "config.yaml").write_text(uncommented)
    r = _check_config(tmp_path / "config.yaml")
    assert r.returncode == 0, uncommented + r.stdout + r.stderr


def test_conffile_with_a_misspelt_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFFILE.read_text() + "gatway:\n  host: gw\n")
    r = _check_config(tmp_path / "config.yaml")
    assert r.returncode == 2 and "gatway" in r.stderr, r.stdout + r.stderr
