"""The configuration loader: any bytes give a Config or a ConfigError naming the key and line,
never another exception, and a reload with such a file keeps the daemon's running one."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import yaml
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.invariants import fingerprints
from support.tree import Tree

from edge_certd.config import Config, load_config, parse_config
from edge_certd.core.errors import ConfigError

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = (PROJECT / "config.example.yaml").read_text()

# (file text, text the one problem must contain, including its line)
HOSTILE = [
    ("drop_dir: 2023-02-30\n", "line 1: drop_dir: must be an absolute path"),
    ("watch:\n  settle_ms: " + "9" * 5000 + "\n", "line 2: watch.settle_ms: integer longer"),
    ("watch:\n  settle_ms: !!int abc\n", "line 2: watch.settle_ms: not a valid integer"),
    ("watch:\n  rescan_interval: !!float x\n", "line 2: watch.rescan_interval: not a valid"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "line 1: nested deeper than"),
    ("x:\n" + "".join("  " * i + "a:\n" for i in range(1, 40)), "nested deeper than"),
    (
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
        "line 2: aliases (*name) are not supported",
    ),
    (
        "trust_store:\n  ca_dir: /x/edge-certd\ntrust_store:\n  update_timeout: 5\n",
        "line 3: duplicate key 'trust_store' (first at line 1)",
    ),
    ("watch:\n  settle_ms: 5\n  settle_ms: 6\n", "line 3: watch: duplicate key 'settle_ms'"),
    ("drop_dir: !!binary aGk=\n", "line 1: drop_dir: !!binary values are not supported"),
    ("keyvault_export_dirs: !!set {/a: null}\n", "!!set values are not supported"),
    ("base: &b {settle_ms: 5}\nwatch:\n  <<: *b\n", "aliases"),
    ("drop_dir: !!python/object:os.system x\n", "not valid YAML"),
    ("drop_dir: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ('drop_dir: "/a\\0b"\n', "line 1: drop_dir: contains the control character U+0000"),
    ("keyvault_export_dirs: [" + ", ".join(["/k"] * 300) + "]\n", "more than 256 entries"),
    ("drop_dir: " + "/a" * 3000 + "\n", "value longer than 4096"),
    ("{? [a, b] : c}\n", "a key must be a plain name"),
]


@pytest.mark.parametrize(("text", "needle"), HOSTILE)
def test_hostile_files_are_config_errors_with_key_and_line(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert any(needle in p for p in caught.value.problems), caught.value.problems


NUMBERS = [
    ("watch", "rescan_interval", "0"),
    ("watch", "rescan_interval", "-5"),
    ("watch", "rescan_interval", ".nan"),
    ("watch", "rescan_interval", ".inf"),
    ("watch", "settle_ms", "0"),
    ("watch", "retry_initial_seconds", "0"),
    ("watch", "retry_max_seconds", "-1"),
    ("expiry", "check_interval", "0"),
    ("trust_store", "update_timeout", "0"),
    ("on_change", "timeout", ".nan"),
    ("policy", "min_rsa_bits", "512"),
    ("policy", "min_rsa_bits", "100000"),
    ("policy", "max_file_bytes", "0"),
    ("gateway", "timeout", "-1"),
    ("gateway", "port", "0"),
    ("gateway", "port", "70000"),
    ("expiry", "warn_days", "[30, -1]"),
]


@pytest.mark.parametrize(("section", "key", "value"), NUMBERS)
def test_numbers_out_of_range_are_refused(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"{section}:\n  {key}: {value}\n")
    assert any(p.startswith(f"line 2: {section}.{key}") for p in caught.value.problems), caught.value.problems


def test_retry_max_below_retry_initial_is_refused() -> None:
    with pytest.raises(ConfigError, match="retry_max_seconds: must not be smaller"):
        parse_config("watch:\n  retry_initial_seconds: 60\n  retry_max_seconds: 5\n")


def test_paths_are_tidied_and_dot_dot_refused() -> None:
    config = parse_config("drop_dir: /srv//drop/./\nkeyvault_export_dirs: [/kv/]\n")
    assert config.drop_dir == "/srv/drop" and config.keyvault_export_dirs == ["/kv"]
    for text in (
        "drop_dir: /var/lib/../../etc\n",
        "state_dir: relative\n",
        "pfx_password_files: [pw.txt]\n",
        "gateway:\n  connection_string_file: cs\n",
    ):
        with pytest.raises(ConfigError):
            parse_config(text)


@pytest.mark.parametrize(
    "ca_dir",
    [
        "/",
        "/usr/local/share/ca-certificates",
        "/usr/local/share",
        "/etc/ssl/certs",
        "/usr/local/share/ca-certificates/other-tool",
    ],
)
def test_ca_dir_must_be_edge_certds_own(ca_dir: str) -> None:
    with pytest.raises(ConfigError, match="trust_store.ca_dir: must"):
        parse_config(f"trust_store:\n  ca_dir: {ca_dir}\n")


OVERLAPS = [
    ("bundles:\n  dir: /var/lib/edge-certd/drop\n", "bundles.dir: must not be inside the source"),
    ("bundles:\n  dir: /var/lib/edge-certd/drop/b\n", "bundles.dir: must not be inside"),
    ("keyvault_export_dirs: [/var/lib/edge-certd/bundles]\n", "bundles.dir: must not be inside"),
    (
        "drop_dir: /etc/ssl\ntrust_store:\n  system_bundle: /etc/ssl/certs/ca-certificates.crt\n",
        "trust_store.system_bundle: must not be inside",
    ),
    ("drop_dir: /usr/local/share/ca-certificates\n", "trust_store.ca_dir: must not be inside"),
    (
        "drop_dir: /usr/local/share/ca-certificates/edge-certd/in\n",
        "drop_dir: must not be inside trust_store.ca_dir",
    ),
    (
        "keyvault_export_dirs: [/usr/local/share/ca-certificates/edge-certd]\n",
        "must not be inside trust_store.ca_dir",
    ),
    ("drop_dir: /srv/drop\nstate_dir: /srv/drop/state\n", "state_dir: must not be inside"),
    ("drop_dir: /srv/drop\nbundles:\n  env_file: /srv/drop/ca.env\n", "bundles.env_file: must not be inside"),
    ("keyvault_export_dirs: [/var/lib/edge-certd/drop]\n", "is the same directory as drop_dir"),
    (
        "state_dir: /usr/local/share/ca-certificates/edge-certd\n",
        "trust_store.ca_dir: must not overlap state_dir",
    ),
    (
        "trust_store:\n  ca_dir: /var/lib/edge-certd/bundles/edge-certd\n",
        "trust_store.ca_dir: must not overlap bundles.dir",
    ),
]


@pytest.mark.parametrize(("text", "needle"), OVERLAPS)
def test_dangerous_overlaps_are_refused(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(needle in p for p in caught.value.problems), caught.value.problems


def test_defaults_example_and_test_trees_are_valid(tree: Tree) -> None:
    # The defaults keep drop and bundles inside the state directory; that is safe.
    assert parse_config("") == Config()
    parse_config(EXAMPLE, "config.example.yaml")
    tree.load()
    parse_config(
        "keyvault_export_dirs: [/var/lib/waagent/Microsoft.Azure.KeyVault.Store,"
        " /var/lib/edge-certd/kv]\nstate_dir: /tmp/x\ndrop_dir: /srv/drop\n"
    )


def test_any_mutation_of_the_example_gives_a_config_or_a_config_error() -> None:
    rng = random.Random(20240611)
    pieces = [
        "\n",
        ": ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "!!int ",
        "!!timestamp ",
        "2023-02-30",
        "9" * 60,
        ".nan",
        "'",
        '"',
        "\\",
        "\t",
        "\x00",
        "\x1b",
        "<<: ",
        "? ",
        "|",
        ">",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "\ufeff",
        "é",
    ]
    for _ in range(400):
        text = EXAMPLE
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text))
            if rng.random() < 0.3:
                text = text[:at] + text[at + rng.randint(1, 40) :]
            else:
                text = text[:at] + rng.choice(pieces) + text[at:]
        try:
            parse_config(text)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) for p in exc.problems)


def test_oversized_and_non_utf8_files_are_config_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(str(big))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"drop_dir: /caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(latin))


def test_the_command_line_exits_2_without_a_traceback(tree: Tree) -> None:
    tree.config_path.write_text("watch:\n  settle_ms: " + "9" * 5000 + "\nexpiry:\n  a: 2023-02-30\n")
    result = tree.cli("check-config")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 2: watch.settle_ms: integer longer than" in result.stderr


def test_hostile_files_at_reload_keep_the_running_configuration(tree: Tree) -> None:
    first, second = CA.root("Reload First"), CA.root("Reload Second")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "first.pem").write_bytes(first.cert_pem)
    good = tree.config_path.read_text()
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    bad_files = [
        good + laughs,
        good + "trust_store:\n  ca_dir: /usr/local/share/ca-certificates\n",  # duplicate key
        good + "x: " + "[" * 20000 + "]" * 20000 + "\n",
        good.replace("settle_ms: 150", "settle_ms: " + "9" * 5000),
        good + "expiry:\n  warn_days: [2023-02-30]\n",
        good.replace("settle_ms: 150", "settle_ms: .nan"),
    ]
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        assert len(fingerprints(tree.edge_roots)) == 1
        for bad in bad_files:
            tree.config_path.write_text(bad)
            mark = daemon.mark()
            daemon.signal(signal.SIGHUP)
            ready = daemon.wait_ready(mark).fields
            assert "refused" in ready["STATUS"], ready
            assert daemon.alive
        recorded = json.loads((tree.state / "daemon.json").read_bytes())
        assert "configuration refused" in recorded["status_line"]
        # Still syncing with the configuration it started with.
        mark = daemon.mark()
        (tree.drop / "second.pem").write_bytes(second.cert_pem)
        daemon.wait_synced(
            mark,
            check=lambda: len(fingerprints(tree.edge_roots)) == 2,
            what="a sync under the running configuration",
        )
        assert "Traceback" not in daemon.log()
        tree.config_path.write_text(good)
        mark = daemon.mark()
        daemon.signal(signal.SIGHUP)
        assert "refused" not in daemon.wait_ready(mark).fields["STATUS"]


def test_yaml_module_is_not_asked_for_anything_unsafe() -> None:
    # The loader builds only plain values; a date stays text where a string is wanted.
    config = parse_config("gateway:\n  host: 2023-02-30\n")
    assert config.gateway.host == "2023-02-30"
    assert isinstance(yaml.safe_load("a: 1"), dict)  # the stock loader is untouched
