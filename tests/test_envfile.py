"""The env file is read back exactly, and runs nothing, by sh and by systemd's EnvironmentFile=.

sh is run for real. systemd is run for real when this machine booted it (a transient unit
through systemd-run); otherwise the file is read by `systemd_env_file`, a transcription of
the rules systemd.exec(5) documents for EnvironmentFile= and src/basic/env-file.c applies
(the booted-container e2e, tests/e2e/test_container.py, checks the real one on Debian 12).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_certd.config import parse_config
from edge_certd.core.errors import ConfigError, WriteError
from edge_certd.targets.envfile import EnvFile, quote
from edge_certd.targets.registry import followers

VALUES = [
    "/srv/edge certd/bundles/edge-roots.pem",  # a space
    "$(touch {marker})",
    "`touch {marker}`",
    'say "hi" \\ and \\\\ back\\',  # double quotes and backslashes, one at the end
    "#not a comment # either",
    "  leading and trailing spaces  ",
    "$HOME ${HOME} $1 * ? [a] ~ ; & | < > !",
    "unicode: Grüße, 証明書",
    "-Djavax.net.ssl.trustStorePassword=p@ss;w0rd$(id)",
]


@dataclass
class Fixed:
    """A target that contributes fixed variables."""

    pairs: tuple[tuple[str, str], ...]
    name: str = "fixed"

    def env(self) -> tuple[tuple[str, str], ...]:
        return self.pairs


def _write(tmp_path: Path, pairs: tuple[tuple[str, str], ...]) -> Path:
    path = tmp_path / "etc" / "ca.env"
    env = EnvFile(path=str(path), contributors=(Fixed(pairs),))  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(env.text())
    return path


def _pairs(marker: Path) -> tuple[tuple[str, str], ...]:
    return tuple((f"V{i}", value.replace("{marker}", str(marker))) for i, value in enumerate(VALUES))


def _sourced(path: Path, key: str) -> str:
    out = subprocess.run(
        ["sh", "-c", f'set -a; . "$1"; printenv {key}', "sh", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.defpath},
        timeout=30,
    ).stdout
    assert out.endswith("\n")
    return out[:-1]


def test_sh_reads_every_value_exactly_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pairs = _pairs(marker)
    path = _write(tmp_path, pairs)
    for key, value in pairs:
        assert _sourced(path, key) == value
    assert not marker.exists(), "sourcing the env file ran a command"


def systemd_env_file(text: str) -> dict[str, str]:
    """What systemd's EnvironmentFile= makes of `text` (one value per line; our file never
    continues a line). A line starting with # or ; is a comment. After `=`, and after each
    closing quote, whitespace is skipped and a quote opens: '...' is literal, "..." takes a
    backslash before " \\ ` $ only. Anywhere else a quote is a plain character, a backslash
    takes the next character literally, and trailing whitespace is dropped.
    """
    result: dict[str, str] = {}
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        if not stripped or stripped[0] in "#;":
            continue
        key, sep, rest = stripped.partition("=")
        assert sep, f"a line without '=': {line!r}"
        value, state, keep = "", "pre", 0  # keep: characters trailing whitespace may not eat
        i = 0
        while i < len(rest):
            ch = rest[i]
            if state == "pre" and ch in " \t":
                pass
            elif state == "pre" and ch == "'":
                end = rest.index("'", i + 1)
                value += rest[i + 1 : end]
                keep, i = len(value), end
            elif state == "pre" and ch == '"':
                i += 1
                while rest[i] != '"':
                    if rest[i] == "\\":
                        i += 1
                        value += rest[i] if rest[i] in '"\\`$' else "\\" + rest[i]
                    else:
                        value += rest[i]
                    i += 1
                keep = len(value)
            elif ch == "\\":
                state = "value"
                i += 1
                value += rest[i]
                keep = len(value)
            else:
                state = "value"
                value += ch
                if ch not in " \t":
                    keep = len(value)
            i += 1
        result[key.strip()] = value[:keep]
    return result


def _systemd_reads(path: Path, key: str) -> str | None:
    """The value systemd itself gives `key`, or None when this machine has no systemd."""
    booted = os.path.isdir("/run/systemd/system") and shutil.which("systemd-run")
    if not booted or os.geteuid() != 0:
        return None
    out = subprocess.run(
        [
            "systemd-run",
            "--quiet",
            "--pipe",
            "--wait",
            "--collect",
            "-p",
            f"EnvironmentFile={path}",
            "/usr/bin/printenv",
            key,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out[:-1]


def test_systemd_reads_every_value_exactly(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pairs = _pairs(marker)
    path = _write(tmp_path, pairs)
    # The comment lines must not hide or add a variable.
    assert systemd_env_file(path.read_text()) == dict(pairs)
    for key, value in pairs:
        real = _systemd_reads(path, key)
        assert real is None or real == value
    assert not marker.exists()


def test_the_systemd_reading_is_not_the_shell_reading() -> None:
    # The transcription must tell the two apart where they differ, or it proves nothing.
    assert systemd_env_file("A=$(x) # y\n") == {"A": "$(x) # y"}
    assert systemd_env_file("A='it'\\''s'\n") == {"A": "it''s'"}  # sh reads: it's
    assert systemd_env_file('A="a\\nb"\n') == {"A": "a\\nb"}


@pytest.mark.parametrize("value", ["it's", "a\nb", "a\rb", "nul\x00", "esc\x1b[2K"])
def test_values_that_cannot_be_quoted_safely_are_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        quote(value)
    env = EnvFile(path=str(tmp_path / "ca.env"), contributors=(Fixed((("K", value),)),))  # type: ignore[arg-type]
    with pytest.raises(WriteError):
        env.apply(None)  # type: ignore[arg-type]
    assert not (tmp_path / "ca.env").exists()


def test_configured_paths_and_password_reach_the_file_quoted(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundles = tmp_path / f"bundles $(touch {marker})"
    config = parse_config(
        f"bundles:\n  dir: '{bundles}'\n  env_file: {tmp_path}/ca.env\n  java: pkcs12\n"
        f"  java_password: 'pa;ss$(touch${{IFS}}{marker})`id`$x\\#'\n"
    )
    (env,) = [t for t in followers(config) if isinstance(t, EnvFile)]
    path = tmp_path / "ca.env"
    path.write_text(env.text())
    assert _sourced(path, "NODE_EXTRA_CA_CERTS") == f"{bundles}/edge-roots.pem"
    opts = _sourced(path, "EDGE_CERTD_JAVA_OPTS")
    assert opts.endswith(f"-Djavax.net.ssl.trustStorePassword=pa;ss$(touch${{IFS}}{marker})`id`$x\\#")
    assert systemd_env_file(path.read_text())["EDGE_CERTD_JAVA_OPTS"] == opts
    assert not marker.exists()


@pytest.mark.parametrize(
    "yaml_text",
    [
        'bundles:\n  java_password: "it\'s"\n',
        'bundles:\n  dir: "/srv/it\'s"\n',
        'bundles:\n  java_password: "a\\nEVIL=1"\n',
        'bundles:\n  java_password: "pass word"\n',
        "bundles:\n  java_password: 'pass\"word'\n",
        'bundles:\n  env_file: "/etc/edge-certd/ca.env\\nEVIL=1"\n',
    ],
)
def test_config_refuses_what_the_env_file_cannot_carry(yaml_text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml_text)
    assert any(p.startswith("line 2: bundles.") for p in caught.value.problems), caught.value
