"""Docs that can't drift: the README's trial runs as written, and every command is documented.

The trial block is taken from README.md by its marker and run with bash exactly as it is
written, in a temporary HOME, working directory and TMPDIR, with `python3` being this
interpreter and `edge_certd` this checkout. The block itself keeps every path under `$T`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert "T=$(mktemp -d)" in block.splitlines()[0]
    # Any absolute path not under $T (/etc/..., /usr/..., a bare /tmp) would be a slip.
    stray = re.findall(r"(?:^|[\s\[,:=>])(/[A-Za-z][\w./-]*)", block, re.MULTILINE)
    assert stray == []
    assert "control_socket: $T/control" in block  # never a real daemon's socket
    assert "metrics: {textfile: never}" in block and "package_roots_dir: null" in block
    for flag in ("--certsconf", "--certsdir", "--localcertsdir", "--etccertsdir", "--hooksdir"):
        assert re.search(rf"{flag}, \$T/", block), flag
    # The key is written outside the drop directory, where it would be refused.
    assert "-keyout $T/root.key" in block and "-keyout $T/drop" not in block


def test_the_trial_runs_exactly_as_written(tmp_path: Path) -> None:
    update = require_tool("update-ca-certificates")
    require_tool("openssl")
    block = fenced_block_after(TRIAL_MARKER)
    shim = tmp_path / "bin"
    shim.mkdir()
    # A script, not a symlink: a venv's interpreter finds its site-packages by its own path.
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python3").chmod(0o755)
    for name in ("home", "cwd", "tmp"):
        (tmp_path / name).mkdir()
    path = os.pathsep.join([str(shim), os.path.dirname(update), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {
        **os.environ,
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "PYTHONPATH": str(PROJECT),
        "EDGE_CERTD_LOG": "stderr",
    }
    env.pop("EDGE_CERTD_CONFIG", None)
    before = SYSTEM_BUNDLE.stat() if SYSTEM_BUNDLE.exists() else None

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 CA trusted; 1 added" in result.stdout
    assert re.search(r"trusted CAs: 1\n +[0-9a-f]{16}  CN=Test Root ", result.stdout), result.stdout
    assert re.search(r"^Test-Root-[0-9a-f]{16}\.crt$", result.stdout, re.MULTILINE), result.stdout
    (tree,) = (tmp_path / "tmp").iterdir()  # everything went into the one $T
    assert (tree / "etc/ssl/certs/ca-certificates.crt").read_text().count("BEGIN CERTIFICATE") == 1
    assert (tree / "bundles/edge-roots.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert not (tree / "drop/root.key").exists()
    if before is not None:  # this machine's own bundle was not rewritten
        after = SYSTEM_BUNDLE.stat()
        assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


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
