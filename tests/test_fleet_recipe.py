"""The README's fleet recipe shows the playbook the rehearsal (tests/fleet) runs, as it is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
PLAYBOOK = PROJECT / "docs/fleet/roots-upgrade.yml"
MARKER = "<!-- readme-test: fleet-playbook -->"


def _readme_block() -> str:
    rest = (PROJECT / "README.md").read_text().split(MARKER, 1)[1]
    assert rest.startswith("\n```yaml\n"), "the playbook block follows the marker"
    return rest[len("\n```yaml\n") :].split("\n```\n", 1)[0]


def test_the_readme_shows_the_playbook_the_rehearsal_runs() -> None:
    without_comments = "\n".join(ln for ln in PLAYBOOK.read_text().splitlines() if not ln.startswith("#"))
    assert _readme_block().strip() == without_comments.strip()


def test_a_readme_that_drifts_from_the_playbook_is_caught() -> None:
    drifted = _readme_block().replace("update_cache: true", "update_cache: false")
    assert yaml.safe_load(drifted) != yaml.safe_load(PLAYBOOK.read_text())
    assert yaml.safe_load(_readme_block()) == yaml.safe_load(PLAYBOOK.read_text())


def test_the_playbook_installs_the_newest_version_or_exactly_roots_version() -> None:
    (play,) = yaml.safe_load(PLAYBOOK.read_text())
    (task,) = play["tasks"]
    apt = task["ansible.builtin.apt"]
    assert apt["update_cache"] is True
    assert "roots_version" in apt["name"] and "latest" in apt["state"] and "present" in apt["state"]
    ansible = shutil.which("ansible-playbook")
    if ansible is None:
        pytest.skip("ansible-playbook is not installed (ansible-core)")
    r = subprocess.run(
        [ansible, "--syntax-check", "-i", "localhost,", str(PLAYBOOK)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
