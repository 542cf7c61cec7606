"""`edge-certd container-args`: the mount and variables a container needs, as a real shell and
a JSON parser read them, and agreeing with the files a real sync writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.certs import CA
from support.tree import Tree, require_tool

from edge_certd.cli import EXIT_OK, EXIT_USAGE
from edge_certd.cli.containers import MOUNT_POINT
from edge_certd.config import load_config
from edge_certd.sync import operations as actions


def words_as_sh_reads_them(line: str) -> list[str]:
    """Split `line` the way `docker run LINE` typed into sh would: by a real sh."""
    proc = subprocess.run(["sh", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True, timeout=10)
    return proc.stdout.decode().split("\0")[:-1]


def run_args(tree: Tree, *args: str) -> subprocess.CompletedProcess[str]:
    return tree.cli("container-args", *args)


def env_of(words: list[str]) -> dict[str, str]:
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "-e"]
    return dict(p.split("=", 1) for p in pairs)


@pytest.mark.parametrize("fmt", ["docker", "podman"])
def test_run_args_mount_the_bundle_directory_read_only_and_point_into_it(tree: Tree, fmt: str) -> None:
    r = run_args(tree, "--format", fmt)
    assert r.returncode == EXIT_OK, r.stderr
    words = words_as_sh_reads_them(r.stdout.strip())
    assert words[:2] == ["--mount", f"type=bind,src={tree.bundles},dst={MOUNT_POINT},readonly"]
    env = env_of(words)
    assert env["NODE_EXTRA_CA_CERTS"] == f"{MOUNT_POINT}/edge-roots.pem"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == f"{MOUNT_POINT}/ca-bundle.pem"
    assert "JAVA_TOOL_OPTIONS" not in env  # the tree's java is off: no truststore is written
    assert len(words) == 2 + 2 * len(env)


def test_default_format_is_docker(tree: Tree) -> None:
    assert run_args(tree).stdout == run_args(tree, "--format", "docker").stdout


def test_a_bundle_dir_with_shell_characters_reaches_the_runtime_unchanged(tree: Tree, tmp_path: Path) -> None:
    odd = tmp_path / "my bundles $(touch pwned) `id` 'q' \"d\" #x"
    tree.write_config(bundles__dir=str(odd))
    r = run_args(tree, "--format", "podman")
    if r.returncode == EXIT_USAGE:  # the configuration may refuse such a path; then nothing runs
        assert "bundles" in r.stderr
        return
    words = words_as_sh_reads_them(r.stdout.strip())
    assert words[1] == f"type=bind,src={odd},dst={MOUNT_POINT},readonly"
    assert not (Path.cwd() / "pwned").exists()


def test_java_options_name_the_truststore_inside_the_container(tree: Tree) -> None:
    tree.write_config(bundles__java="jks", bundles__java_password="pass;word")
    env = env_of(words_as_sh_reads_them(run_args(tree).stdout.strip()))
    store = f"{MOUNT_POINT}/java-truststore.jks"
    assert env["EDGE_CERTD_JAVA_TRUSTSTORE"] == store
    assert env["JAVA_TOOL_OPTIONS"] == env["EDGE_CERTD_JAVA_OPTS"]
    assert f"-Djavax.net.ssl.trustStore={store}" in env["JAVA_TOOL_OPTIONS"]
    assert "-Djavax.net.ssl.trustStoreType=JKS" in env["JAVA_TOOL_OPTIONS"]


def test_iotedge_prints_create_options_json(tree: Tree) -> None:
    r = run_args(tree, "--format", "iotedge")
    assert r.returncode == EXIT_OK, r.stderr
    options = json.loads(r.stdout)
    assert set(options) == {"HostConfig", "Env"}
    assert options["HostConfig"] == {"Binds": [f"{tree.bundles}:{MOUNT_POINT}:ro"]}
    env = dict(item.split("=", 1) for item in options["Env"])
    assert env["NODE_EXTRA_CA_CERTS"] == f"{MOUNT_POINT}/edge-roots.pem"
    assert env["SSL_CERT_FILE"] == f"{MOUNT_POINT}/ca-bundle.pem"
    # The deployment manifest wants createOptions as a string: it must survive a round trip.
    assert json.loads(json.dumps(json.dumps(options))) == json.dumps(options)


@pytest.mark.parametrize("bad", [",", ":"])
def test_a_bundle_dir_no_mount_syntax_can_carry_is_a_usage_error(
    tree: Tree, tmp_path: Path, bad: str
) -> None:
    tree.write_config(bundles__dir=str(tmp_path / f"a{bad}b"))
    for fmt in ("docker", "iotedge"):
        r = run_args(tree, "--format", fmt)
        assert r.returncode == EXIT_USAGE
        assert r.stdout == ""
        assert "mount syntax" in r.stderr


def test_every_path_it_names_is_a_file_a_real_sync_wrote(tree: Tree) -> None:
    tree.write_config(bundles__java="jks")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Container Args Root").cert_pem)
    actions.sync(load_config(str(tree.config_path))[0])
    env = env_of(words_as_sh_reads_them(run_args(tree).stdout.strip()))
    for key, value in env.items():
        if value.startswith(MOUNT_POINT + "/"):
            host = tree.bundles / os.path.relpath(value, MOUNT_POINT)
            assert host.is_file(), f"{key}={value}: {host} was not written"


# --------------------------------------------------------------- the Java password, as Java reads it

# Every character the configuration lets through that a shell, Docker or the JVM could read
# as something else: `$(...)`, backquotes, `;`, `&`, `|`, `<`, `#`, `*`, `\\` and `=` (Docker
# splits `KEY=VALUE` at the first `=` only: docker run's --env and --env-file, and the Engine
# API's Env items, so a later `=` is part of the value).
HOSTILE_PASSWORD = "p;a$(id)`id`&|<x#*\\=y"

JAVA_PRINTS_PROPERTIES = """
public class Props {
    public static void main(String[] args) {
        for (String key : new String[] {"javax.net.ssl.trustStore", "javax.net.ssl.trustStoreType",
                "javax.net.ssl.trustStorePassword"}) {
            System.out.println(key + "=" + System.getProperty(key));
        }
    }
}
"""


def java_properties(tmp_path: Path, java_tool_options: str) -> subprocess.CompletedProcess[str]:
    """What a real JVM makes of JAVA_TOOL_OPTIONS (source-file mode, JDK 11 and later)."""
    java = require_tool("java")
    source = tmp_path / "Props.java"
    source.write_text(JAVA_PRINTS_PROPERTIES)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JAVA_TOOL_OPTIONS": java_tool_options}
    return subprocess.run([java, str(source)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("fmt", ["docker", "iotedge"])
def test_the_jvm_reads_the_printed_java_options_exactly(tree: Tree, tmp_path: Path, fmt: str) -> None:
    tree.write_config(bundles__java="jks", bundles__java_password=HOSTILE_PASSWORD)
    r = run_args(tree, "--format", fmt)
    assert r.returncode == EXIT_OK, r.stderr
    if fmt == "iotedge":
        env = dict(item.split("=", 1) for item in json.loads(r.stdout)["Env"])
    else:
        env = env_of(words_as_sh_reads_them(r.stdout.strip()))
    proc = java_properties(tmp_path, env["JAVA_TOOL_OPTIONS"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"javax.net.ssl.trustStore={MOUNT_POINT}/java-truststore.jks",
        "javax.net.ssl.trustStoreType=JKS",
        f"javax.net.ssl.trustStorePassword={HOSTILE_PASSWORD}",
    ]


def test_the_jvm_splits_java_tool_options_at_a_space(tmp_path: Path) -> None:
    """Why the configuration refuses a space: Java takes the rest of the password for an option
    of its own (and JDKs before 9 have no quoting to prevent it)."""
    proc = java_properties(tmp_path, "-Djavax.net.ssl.trustStorePassword=pass word")
    assert proc.returncode != 0
    assert "word" in proc.stderr


@pytest.mark.parametrize("password", ["pass word", 'pass"word'])
def test_a_java_password_java_would_misread_is_refused_by_name(tree: Tree, password: str) -> None:
    tree.write_config(bundles__java="jks", bundles__java_password=password)
    r = run_args(tree)
    assert r.returncode != EXIT_OK
    assert r.stdout == ""
    assert "bundles.java_password" in r.stderr and "JAVA_TOOL_OPTIONS" in r.stderr
