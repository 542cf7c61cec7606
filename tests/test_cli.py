"""The command line: subcommands, exit codes, config errors, and the example config."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tree import Tree

from edge_certd import __version__
from edge_certd.config import Config, parse_config
from edge_certd.sync.engine import Engine

PROJECT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_certd", *args],
        capture_output=True,
        text=True,
        cwd=str(PROJECT),
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_version_and_help_document_the_exit_codes() -> None:
    assert run("--version").stdout.strip() == f"edge-certd {__version__}"
    help_text = run("--help").stdout
    for line in (
        "0  success",
        "1  could not apply",
        "2  usage, configuration or permission error",
        "3  applied, but some inputs were rejected",
    ):
        assert line in help_text


def test_example_config_is_valid_and_documents_every_key() -> None:
    text = (PROJECT / "config.example.yaml").read_text()
    parse_config(text, "config.example.yaml")
    data = yaml.safe_load(text)
    fields = getattr(Config, "model_fields", None) or Config.__fields__
    assert set(data) == set(fields)
    for section, value in data.items():
        if isinstance(value, dict):
            sub = getattr(Config, "model_fields", None)
            model = sub[section].annotation if sub else Config.__fields__[section].type_
            nested = getattr(model, "model_fields", None) or model.__fields__
            assert set(value) == set(nested), section


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("drop_dir: /x\ntrust_store:\n  ca_dirr: /y\npolicy:\n  min_rsa_bits: lots\n")
    result = run("--config", str(bad), "check-config")
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "line 3: trust_store.ca_dirr: unknown key" in result.stderr
    # The example is named where the package installs it, not as a file in the checkout.
    assert "/usr/share/doc/edge-certd/examples/config.example.yaml" in result.stderr
    assert "config.example.yaml" in (PROJECT / "packaging/debian/edge-certd.examples").read_text().split()
    assert "line 5: policy.min_rsa_bits" in result.stderr


def test_config_comes_from_the_environment_variable(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("drop_dir: /srv/drop\n")
    result = run("check-config", env={"EDGE_CERTD_CONFIG": str(good)})
    assert result.returncode == 0 and '"drop_dir": "/srv/drop"' in result.stdout
    assert run("check-config", env={"EDGE_CERTD_CONFIG": str(tmp_path / "none.yaml")}).returncode == 2


def test_relative_paths_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    for text, needle in (
        ("drop_dir: relative/dir\n", "must be an absolute path"),
        ("drop_dir: [unclosed\n", "not valid YAML"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        result = run("--config", str(path), "sync")
        assert result.returncode == 2 and needle in result.stderr


def test_list_json_has_the_documented_fields(tree: Tree) -> None:
    tree.drop.mkdir(parents=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Listed").cert_pem)
    tree.cli("sync")
    (item,) = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    assert {"sha256", "subject", "not_after", "path", "sources"} <= set(item)
    assert item["not_after"].endswith("Z") and "T" in item["not_after"]
    assert "Listed" in tree.cli("list").stdout


def test_inspect_reports_and_installs_nothing(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Inspected")
    good, leaf = tmp_path / "good.pem", tmp_path / "leaf.pem"
    good.write_bytes(root.cert_pem)
    leaf.write_bytes(root.issue_server("gw", ["gw"]).cert_pem)
    result = tree.cli("inspect", str(good), str(leaf))
    assert result.returncode == 3
    assert "would trust: CN=Inspected" in result.stdout and "(not_ca)" in result.stdout
    assert not tree.ca_dir.exists() and tree.update_runs() == 0
    assert tree.cli("inspect", str(good)).returncode == 0


def test_add_refuses_a_bad_file_and_copies_nothing(tree: Tree, tmp_path: Path) -> None:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(CA.root().issue_server("gw", ["gw"]).cert_pem)
    result = tree.cli("add", str(leaf))
    assert result.returncode == 2 and "not_ca" in result.stderr
    assert not tree.drop.exists() or list(tree.drop.iterdir()) == []


def test_add_places_the_file_in_the_drop_dir_and_syncs(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Added")
    source = tmp_path / "added root.pem"
    source.write_bytes(root.cert_pem)
    result = tree.cli("add", str(source))
    assert result.returncode == 0, result.stderr
    assert (tree.drop / "added-root.pem").read_bytes() == root.cert_pem
    assert "trusts CN=Added" in result.stdout
    assert not [p for p in tree.drop.iterdir() if p.name.startswith(".")]


def test_remove_keeps_the_source_and_add_brings_it_back(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Removable")
    tree.drop.mkdir(parents=True)
    (tree.drop / "root.pem").write_bytes(root.cert_pem)
    tree.cli("sync")
    (item,) = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    result = tree.cli("remove", item["sha256"][:12])
    assert result.returncode == 0, result.stderr
    assert json.loads(tree.cli("list", "--json").stdout)["trusted"] == []
    assert (tree.drop / "root.pem").exists()
    assert tree.cli("sync").stdout.count("stays removed") == 1
    assert tree.cli("remove", "nonexistent").returncode == 2
    back = tree.cli("add", str(tree.drop / "root.pem"))
    assert back.returncode == 0, back.stderr
    assert len(json.loads(tree.cli("list", "--json").stdout)["trusted"]) == 1


def test_remove_takes_what_its_help_says_and_not_the_subject(tree: Tree) -> None:
    root = CA.root("Named Root")
    tree.drop.mkdir(parents=True)
    (tree.drop / "gateway.pem").write_bytes(root.cert_pem)
    tree.cli("sync")
    (item,) = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    installed = os.path.basename(item["path"])
    assert installed == f"Named-Root-{item['sha256'][:16]}.crt"  # <CN slug>-<sha256[:16]>.crt
    for name in ("CN=Named Root", "Named Root", item["sha256"][:5], str(tree.drop / "gateway.pem")):
        assert tree.cli("remove", name).returncode == 2, name
    for name in (installed, "gateway.pem", item["sha256"][:6].upper()):
        assert tree.cli("remove", name).returncode == 0, name
        assert json.loads(tree.cli("list", "--json").stdout)["trusted"] == []
        assert tree.cli("add", str(tree.drop / "gateway.pem")).returncode == 0


def test_status_works_without_a_daemon(tree: Tree) -> None:
    result = tree.cli("status")
    assert result.returncode == 0 and "daemon: no record" in result.stdout
    doc = json.loads(tree.cli("status", "--json").stdout)
    assert doc["trusted"] == [] and doc["bundles"]["env_file"] == str(tree.env_file)


def test_add_is_not_fooled_by_what_a_technician_planted_in_the_drop_dir(tree: Tree, tmp_path: Path) -> None:
    """A FIFO and a symlink to /dev/zero named like the file being added: `add` neither
    hangs nor reads them, and copies the bytes it judged under a name of its own."""
    root = CA.root("Planted Root")
    source = tmp_path / "root.pem"
    source.write_bytes(root.cert_pem)
    tree.drop.mkdir(parents=True, exist_ok=True)
    os.mkfifo(tree.drop / "root.pem")
    os.symlink("/dev/zero", tree.drop / "root-2.pem")
    done = tree.cli("add", str(source), timeout=60)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    copied = tree.drop / "root-3.pem"
    assert copied.read_bytes() == root.cert_pem
    from edge_certd.core.pem import pem_fingerprints

    assert hashlib.sha256(root.der).hexdigest() in pem_fingerprints(tree.edge_roots.read_bytes())


def test_a_file_with_odd_bytes_in_its_name_is_held_while_rewritten(tree: Tree) -> None:
    """The held sources are named as the manifest names them, escapes and all."""
    from edge_certd.store.sources import display_path

    root = CA.root("Odd Name Root")
    tree.drop.mkdir(parents=True, exist_ok=True)
    odd = os.path.join(str(tree.drop).encode(), b"gate\nway-\xff.pem")
    with open(odd, "wb") as handle:
        handle.write(root.cert_pem)
    assert tree.cli("sync").returncode == 0
    engine = Engine(tree.load())
    with open(odd, "wb") as handle:  # being rewritten: half of it is there
        handle.write(root.cert_pem[:40])
    result = engine.sync(busy=frozenset({os.fsdecode(odd)}))
    assert not result.removed, "the CA of a file being rewritten was removed"
    (entry,) = result.managed.values()
    assert entry.sources == (display_path(os.fsdecode(odd)),)


# --------------------------------------------------------------------------- what a new user trips on


def test_status_and_list_into_a_closed_pipe_exit_quietly(tree: Tree) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Pipe Root").cert_pem)
    assert tree.cli("sync").returncode == 0
    for command in ("status", "list"):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the CLI writes a byte: `| head -0`
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "edge_certd", "--config", str(tree.config_path), command],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                cwd=str(Path(__file__).resolve().parent.parent),
                check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        assert proc.stderr == ""
        assert proc.returncode == 141  # as a shell reports a tool SIGPIPE ended
    # With a reader that stays, the same command works and exits 0.
    assert tree.cli("status").returncode == 0


def test_status_piped_into_head_prints_its_first_line_only(tree: Tree) -> None:
    done = subprocess.run(
        f"{sys.executable} -m edge_certd --config {tree.config_path} status | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parent.parent),
        check=False,
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_remove_of_a_name_that_matches_nothing_says_what_name_may_be_and_lists_near_matches(
    tree: Tree,
) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    root = CA.root("Contoso Gateway Root")
    (tree.drop / "contoso-root.pem").write_bytes(root.cert_pem)
    assert tree.cli("sync").returncode == 0
    sha = hashlib.sha256(root.der).hexdigest()
    missed = tree.cli("remove", "contoso-roots.pem")
    assert missed.returncode == 2
    for words in ("file name", "SHA-256 prefix", "not the subject", "near matches", sha[:16]):
        assert words in missed.stderr, (words, missed.stderr)
    far = tree.cli("remove", "zzzzzzzz")
    assert far.returncode == 2 and "near matches" not in far.stderr and "file name" in far.stderr
    assert tree.cli("remove", "contoso-root.pem").returncode == 0  # the right name works


@pytest.mark.skipif(os.geteuid() != 0, reason="running the CLI as another user needs root")
def test_remove_as_a_non_member_says_remove_needs_root_not_join_the_group(tree: Tree) -> None:
    from test_control import _as_user

    tree.write_config(sources__trusted_group="root")  # nobody is not a member
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Member Root").cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        result = _as_user(tree, "nobody", "nogroup", "remove", "root.pem")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "needs root" in result.stderr and "adduser" not in result.stderr, result.stderr
        # add is what a member may do: for it the group is still the advice.
        added = _as_user(tree, "nobody", "nogroup", "add", "/nonexistent-but-checked-first.pem")
        assert added.returncode == 2 and "no such file" in added.stderr


def test_package_of_a_leaf_says_a_roots_package_takes_roots(tree: Tree, tmp_path: Path) -> None:
    leaf = CA.root("Package Root").issue_server("gateway", ["gateway.local"])
    path = tmp_path / "gateway.pem"
    path.write_bytes(leaf.cert_pem)
    out = tmp_path / "out"
    out.mkdir()
    result = tree.cli("package", str(path), "--name", "contoso-roots", "--version", "1", "--output", str(out))
    assert result.returncode == 2
    assert "a roots package takes root CA certificates only" in result.stderr, result.stderr
    assert "copy the root CA" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_missing_file_has_one_wording_everywhere(tree: Tree, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "root.pem"
    for args in (
        ("inspect", str(missing)),
        ("add", str(missing)),
        ("package", str(missing), "--name", "contoso-roots", "--version", "1"),
        ("verify", "localhost", "--ca", str(missing)),
        ("inspect", str(tmp_path / "root.pem")),
    ):
        result = tree.cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().endswith(": no such file"), (args, result.stderr)


def test_the_daemon_logs_one_line_at_start_with_what_it_watches_writes_and_checks(tree: Tree) -> None:
    tree.write_config(gateway__host="gateway.example:8883")
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        started = [line for line in daemon.log().splitlines() if " started: " in line]
    (line,) = started  # one line, before the first sync (READY=1 comes after it)
    assert f"edge-certd {__version__} started: watching {tree.drop}" in line
    assert f"system store ({tree.ca_dir})" in line and f"env file ({tree.env_file})" in line
    assert "Java truststore" not in line  # bundles.java: off in this tree
    assert "gateway gateway.example:8883" in line and "EDGE_CERTD_EVENT=started" in line


def test_the_start_line_says_when_no_gateway_is_configured(tree: Tree) -> None:
    from edge_certd.daemon.startup import start_line

    line = start_line(tree.load())
    assert line.endswith("no gateway configured") and "\n" not in line
