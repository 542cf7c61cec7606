"""Docs that can't drift: the README's trial runs as written, and every command is documented.

The trial block is taken from README.md by its marker and run with bash exactly as it is
written, as a user who is not root with a normal user's PATH, in a temporary HOME, working
directory and TMPDIR, with `python3` being this interpreter and `edge_certd` this checkout.
The block itself keeps every path under `$T`, and prints what the README shows.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.tree import require_tool

from edge_certd.cli import build_parser

PROJECT = Path(__file__).resolve().parent.parent
README = (PROJECT / "README.md").read_text()
MAN = (PROJECT / "docs/edge-certd.8").read_text()
TRIAL_MARKER = "<!-- readme-test: trial -->"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def fenced_block_after(marker: str, text: str = README) -> str:
    """The body of the first fenced block that follows `marker`."""
    rest = text[text.index(marker) + len(marker) :]
    match = re.search(r"^```[a-z]*\n(.*?)^```$", rest, re.DOTALL | re.MULTILINE)
    assert match, f"no fenced block after {marker}"
    return match.group(1)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def man_section(name: str) -> str:
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH )", MAN, re.DOTALL | re.MULTILINE)
    assert match, name
    return match.group(1).replace("\\-", "-")


def man_commands() -> dict[str, str]:
    """Each command of COMMANDS with the text of its entry (roff's \\- read as -)."""
    entries: dict[str, str] = {}
    for entry in man_section("COMMANDS").split(".TP\n")[1:]:
        head = entry.splitlines()[0]
        match = re.match(r"(?:\.B[IR]? \"?|\\fB)([a-z-]+)", head)
        assert match, head
        entries[match.group(1)] = entry
    return entries


def test_the_trial_block_keeps_every_path_in_its_temporary_tree() -> None:
    block = fenced_block_after(TRIAL_MARKER)
    assert block.splitlines()[0].startswith("set -e; T=$(mktemp -d)")  # a failing step stops it
    # Any absolute path not under $T (/etc/..., /usr/..., a bare /tmp) would be a slip.
    stray = re.findall(r"(?:^|[\s\[,:=>])(/[A-Za-z][\w./-]*)", block, re.MULTILINE)
    assert stray == []
    assert "control_socket: $T/control" in block  # never a real daemon's socket
    assert "metrics: {textfile: never}" in block and "package_roots_dir: null" in block
    for flag in ("--certsconf", "--certsdir", "--localcertsdir", "--etccertsdir", "--hooksdir"):
        assert re.search(rf"{flag}, \$T/", block), flag
    # The key is written outside the drop directory, where it would be refused.
    assert "-keyout $T/root.key" in block and "-keyout $T/drop" not in block


# A normal user's PATH (Debian's /etc/profile for uid != 0): no /usr/sbin, where
# update-ca-certificates lives.
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def nobody_can_run(program: str) -> bool:
    user = pwd.getpwnam("nobody")
    argv = [require_tool("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    # Through sh, as the trial's python3 shim runs it.
    probe = subprocess.run(
        [*argv, "/bin/sh", "-c", 'exec "$0" -c pass', program], capture_output=True, cwd="/", check=False
    )
    return probe.returncode == 0


def run_trial(block: str) -> subprocess.CompletedProcess[str]:
    """Run `block` with bash as a user who is not root, with a normal user's PATH, in a fresh
    HOME, working directory and TMPDIR; `python3` is this interpreter, `edge_certd` this
    checkout. As root (CI), the user is `nobody`, switched to by util-linux's setpriv, unless
    `nobody` cannot run this interpreter (a venv whose python lives under /root): that world
    still runs the block with a normal user's PATH, and the Debian world runs it as `nobody`."""
    as_root = os.geteuid() == 0 and nobody_can_run(sys.executable)
    work = Path(tempfile.mkdtemp(prefix="edge-certd-trial-"))
    shim = work / "bin"
    shim.mkdir()
    # A script, not a symlink: a venv's interpreter finds its site-packages by its own path.
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python3").chmod(0o755)
    for name in ("home", "cwd", "tmp"):
        (work / name).mkdir()
    env = {
        "PATH": os.pathsep.join([str(shim), USER_PATH]),
        "HOME": str(work / "home"),
        "TMPDIR": str(work / "tmp"),
        "PYTHONPATH": str(PROJECT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "EDGE_CERTD_LOG": "stderr",
        "LANG": "C.UTF-8",
    }
    argv = ["bash", "-c", block]
    if as_root:
        user = pwd.getpwnam("nobody")
        for path in (work, *work.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        argv = [
            require_tool("setpriv"),
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            *argv,
        ]
    try:
        return subprocess.run(
            argv, cwd=work / "cwd", env=env, capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def output_pattern(shown: str) -> str:
    """The README's sample output as a regex: fingerprints, times and $T may differ."""
    pattern = re.escape(shown.strip())
    pattern = re.sub(r"[0-9a-f]{16}", "[0-9a-f]{16}", pattern)
    pattern = re.sub(r"\d{4}\\-\d\d\\-\d\dT[\d:.\\]+Z", r"[0-9T:.Z-]+", pattern)
    pattern = re.sub(r"\d+\\ days\\ left", r"\\d+ days left", pattern)
    pattern = pattern.replace(re.escape("/tmp/tmp.iqBEsmK67U"), r"/\S+")
    return pattern


def test_the_trial_runs_as_written_as_a_normal_user_and_prints_what_the_readme_shows() -> None:
    require_tool("update-ca-certificates")
    require_tool("openssl")
    assert shutil.which("update-ca-certificates", path=USER_PATH) is None  # the point of the test
    before = SYSTEM_BUNDLE.stat() if SYSTEM_BUNDLE.exists() else None

    result = run_trial(fenced_block_after(TRIAL_MARKER))

    assert result.returncode == 0, result.stdout + result.stderr
    shown = fenced_block_after("<!-- readme-test: trial-output -->")
    assert re.fullmatch(output_pattern(shown), result.stdout.strip()), result.stdout
    if before is not None:  # this machine's own bundle was not rewritten
        after = SYSTEM_BUNDLE.stat()
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_a_failing_step_stops_the_trial_with_a_non_zero_exit() -> None:
    require_tool("openssl")
    block = fenced_block_after(TRIAL_MARKER).replace("openssl req", "openssl no-such-command", 1)
    result = run_trial(block)
    assert result.returncode != 0
    assert "CA trusted" not in result.stdout  # nothing after the failing step ran


def test_every_command_is_in_the_man_page_with_its_options() -> None:
    entries = man_commands()
    for name, parser in subcommands().items():
        assert name in entries, f"{name} is missing from edge-certd(8) COMMANDS"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in entries[name], f"edge-certd(8) {name}: {option}"


def test_every_command_is_in_the_readme_command_block() -> None:
    block = fenced_block_after("## Command line")
    listed = {line.split()[0] for line in block.splitlines() if re.match(r"  [a-z]", line)}
    assert listed == set(subcommands())


def test_remove_says_what_name_accepts_in_help_man_page_and_readme() -> None:
    remove = subcommands()["remove"]
    help_text = remove.format_help()
    for words in ("SHA-256", "6", "file name", "not the subject"):
        assert words in help_text, words
    man = man_commands()["remove"]
    for words in ("SHA-256", "six", "<CN slug>-<sha256[:16]>.crt", "not", "subject"):
        assert words in man, words
    assert "not the subject" in README


def test_update_command_is_found_without_sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is an absolute path; a bare name is looked up on PATH, then in the sbin
    directories; a name found nowhere is kept as written (the sync then names it in its error)."""
    from edge_certd.config import UPDATE_CA_CERTIFICATES, parse_config

    real = require_tool("update-ca-certificates")
    monkeypatch.setenv("PATH", USER_PATH)
    assert parse_config("").trust_store.update_command == [UPDATE_CA_CERTIFICATES]
    assert os.path.isfile(UPDATE_CA_CERTIFICATES)
    resolved = parse_config("trust_store: {update_command: [update-ca-certificates, --fresh]}")
    assert resolved.trust_store.update_command[1:] == ["--fresh"]
    assert os.path.samefile(resolved.trust_store.update_command[0], real)
    missing = parse_config("trust_store: {update_command: [no-such-updater-here]}")
    assert missing.trust_store.update_command == ["no-such-updater-here"]
