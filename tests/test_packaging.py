"""The Debian packaging agrees with the code: version, journal catalog, shipped conffile.

These read the source files as text (regular expressions, not imports), so they hold whatever
the package's module layout is, and they run during the package build (debian/rules'
override_dh_auto_test) as well as in CI. No root, no network, nothing outside temp dirs.
"""

from __future__ import annotations

import fnmatch
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


# -- maintainer scripts, trigger, units ---------------------------------------------------------

DEBIAN = TOP / "packaging" / "debian"


def _script(name: str) -> str:
    return (DEBIAN / f"edge-certd.{name}").read_text()


def _shell_list(script: str, variable: str) -> set[str]:
    m = re.search(rf'^{variable}="([^"]*)"$', script, re.M)
    assert m, f'no {variable}="..." in the script'
    return set(m.group(1).split())


def _constant(rel: str, name: str) -> str:
    m = re.search(rf'^{name} = "([^"]+)"$', (TOP / rel).read_text(), re.M)
    assert m, f'no {name} = "..." in {rel}'
    return m.group(1)


def trigger_paths(text: str) -> dict[str, str]:
    """path -> directive, from a deb-triggers(5) file (everything after # is a comment)."""
    found = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            assert len(words) == 2, f"not `directive name`: {line!r}"
            found[words[1]] = words[0]
    return found


def test_edge_certd_declares_an_awaited_file_trigger_on_the_roots_directory() -> None:
    roots_dir = _constant("edge_certd/package/plan.py", "ROOTS_DIR")
    assert trigger_paths((DEBIAN / "edge-certd.triggers").read_text()) == {roots_dir: "interest-await"}
    # The daemon reads the same directory by default, and the package ships it.
    assert (
        f'package_roots_dir: str | None = "{roots_dir}"' in (TOP / "edge_certd/config/model.py").read_text()
    )
    assert roots_dir.lstrip("/") in (DEBIAN / "edge-certd.dirs").read_text().split()


def test_a_trigger_file_with_a_stray_word_is_caught() -> None:
    with pytest.raises(AssertionError):
        trigger_paths("interest /usr/share/edge-certd/roots.d noawait\n")
    assert trigger_paths("# c\n\ninterest-noawait /x # why\n") == {"/x": "interest-noawait"}


def _run_postinst_triggered(tmp_path: Path, sync_exit: int) -> subprocess.CompletedProcess[str]:
    # A stand-in edge-certd on PATH: the real one would sync this machine's trust store.
    (tmp_path / "edge-certd").write_text(
        f'#!/bin/sh\necho "$EDGE_CERTD_CONFIG|$*" >> "{tmp_path}/calls"\nexit {sync_exit}\n'
    )
    (tmp_path / "edge-certd").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "EDGE_CERTD_CONFIG": "/home/someone/test.yaml"}
    return subprocess.run(
        ["sh", str(DEBIAN / "edge-certd.postinst"), "triggered", "/usr/share/edge-certd/roots.d"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_postinst_triggered_syncs_once_with_the_system_configuration(tmp_path: Path) -> None:
    r = _run_postinst_triggered(tmp_path, 0)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "calls").read_text() == "|sync\n"


@pytest.mark.parametrize("sync_exit", [1, 2, 3])
def test_postinst_triggered_reports_a_failed_sync_and_never_fails_dpkg(
    tmp_path: Path, sync_exit: int
) -> None:
    r = _run_postinst_triggered(tmp_path, sync_exit)
    assert r.returncode == 0, r.stderr
    assert f"exited {sync_exit}; see: edge-certd status" in r.stderr


def test_maintainer_scripts_are_posix_sh_and_keep_the_debhelper_token() -> None:
    for name in ("postinst", "prerm", "postrm"):
        path = DEBIAN / f"edge-certd.{name}"
        assert path.read_text().startswith("#!/bin/sh\n"), name
        assert "\n#DEBHELPER#\n" in path.read_text(), name
        subprocess.run(["sh", "-n", str(path)], check=True)
        checkbashisms = shutil.which("checkbashisms")
        if checkbashisms:  # devscripts; not a Build-Depends
            r = subprocess.run([checkbashisms, str(path)], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr


def _actions(script: str) -> list[str]:
    """The maintainer script's actions it acts on: `[ "$1" = X ]` tests and `case "$1"` arms."""
    found = re.findall(r'^if \[ "\$1" = (\S+) \]', script, re.M)
    for body in re.findall(r'^case "\$1" in\n(.*?)^esac', script, re.M | re.S):
        found += [a for arm in re.findall(r"^ {4}(\S[^)]*)\)", body, re.M) for a in arm.split("|")]
    return found


def test_postrm_does_purge_and_nothing_else() -> None:
    postrm = _script("postrm")
    assert _actions(postrm) == ["purge"]
    code = [ln for ln in postrm.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 90, f"postrm has {len(code)} lines of code; keep it short"


STATE_MODULE_NAMES = (
    "MANIFEST_NAME",
    "STATUS_NAME",
    "DAEMON_NAME",
    "LOCK_NAME",
    "PENDING_NAME",
    "BLOCKED_NAME",
)


def test_postrm_knows_every_file_edge_certd_writes_into_a_state_directory() -> None:
    written = {_constant("edge_certd/store/state.py", name) for name in STATE_MODULE_NAMES}
    written |= {
        _constant("edge_certd/store/verdict_cache.py", "CACHE_NAME"),
        _constant("edge_certd/sync/journal_events.py", "MEMORY_NAME"),  # journal-memory, no .json
        _constant("edge_certd/sync/metrics.py", "RUNS_NAME"),
        _constant("edge_certd/diagnose/watch.py", "PLAN_NAME"),
        _constant("edge_certd/daemon/gateway.py", "MEMORY_NAME"),
        _constant("edge_certd/sync/holds.py", "HOLDS_NAME"),
        "purge-paths",  # prerm's record
    }
    assert "journal-memory" in written
    assert _shell_list(_script("postrm"), "STATE_FILES") == written
    # Every *_NAME of the state module is one of them: a new state file must be added here.
    names = set(re.findall(r'^(\w+_NAME) = "', (TOP / "edge_certd/store/state.py").read_text(), re.M))
    assert names <= set(STATE_MODULE_NAMES)


def test_postrm_knows_every_file_edge_certd_writes_into_a_bundles_directory() -> None:
    java = (TOP / "edge_certd/targets/java.py").read_text()
    written = {_constant("edge_certd/targets/bundles.py", n) for n in ("EDGE_ROOTS", "CA_BUNDLE")}
    written |= set(re.findall(r'"(java-truststore\.\w+)"', java)) | set(
        re.findall(r'"(\.java-[\w.-]+)"', java)
    )
    assert {"java-truststore.p12", "java-truststore.jks", ".java-truststore.sha256"} <= written
    assert _shell_list(_script("postrm"), "BUNDLE_FILES") == written


def test_a_postrm_list_missing_a_file_is_caught() -> None:
    old = 'STATE_FILES="lock manifest.json journal-memory.json"\n'
    assert "journal-memory" not in _shell_list(old, "STATE_FILES")


def test_a_postrm_acting_on_remove_is_caught() -> None:
    assert _actions('case "$1" in\n    purge|remove)\n        x\n        ;;\nesac\n') == ["purge", "remove"]


def test_prerm_runs_python_only_on_remove_and_after_the_service_stopped() -> None:
    prerm = _script("prerm")
    body = prerm.split("\n#DEBHELPER#\n", 1)
    assert len(body) == 2 and "python3" not in body[0].split("set -e", 1)[1], "stop the service first"
    assert prerm.count("/usr/bin/python3") == 1
    assert _actions(prerm) == ["remove"]


def _install_rules() -> list[tuple[str, str]]:
    lines = (DEBIAN / "edge-certd.install").read_text().splitlines()
    return [(src, dest) for src, dest in (ln.split() for ln in lines if ln.strip())]


def test_every_unit_file_in_systemd_is_installed_where_dh_installsystemd_finds_it() -> None:
    units = [p for p in (TOP / "systemd").iterdir() if p.suffix in (".service", ".socket", ".timer", ".path")]
    assert {u.name for u in units} >= {"edge-certd.service", "edge-certd.socket"}
    for unit in units:
        rel = f"systemd/{unit.name}"
        dests = [dest for src, dest in _install_rules() if fnmatch.fnmatch(rel, src)]
        assert dests == ["lib/systemd/system/"], f"{rel} is installed to {dests}"


def test_minimum_edge_certd_is_the_first_version_that_reads_roots_d() -> None:
    since = _constant("edge_certd/package/plan.py", "ROOTS_D_SINCE")
    versions = re.findall(r"^edge-certd \(([^()\s]+)\) ", _changelog().read_text(), re.M)
    assert since in versions, f"{since} is not a version in packaging/debian/changelog: {versions}"
    code = code_version((TOP / "edge_certd" / "__init__.py").read_text())
    dpkg = _tool("dpkg")
    assert subprocess.run([dpkg, "--compare-versions", since, "le", code]).returncode == 0
    # No edge-certd older than it is in the changelog, so none can have read roots.d before.
    assert versions[-1] == since, f"the oldest entry is {versions[-1]}; which first read roots.d?"
