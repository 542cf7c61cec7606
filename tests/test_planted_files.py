"""Files planted where edge-certd reads or writes outside its own state (issue 19, item 5 and
item 7): a FIFO, a link to /dev/zero, a 1 GB file, a file others may write, a link to a hidden
key. Each is refused or replaced with a clear message, and nothing hangs: every case runs
under a deadline that fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.planted import deadline, fifo, link_to_zero, sparse
from support.tree import Tree

from edge_certd.config import load_config
from edge_certd.core.errors import ConfigError, UsageError
from edge_certd.diagnose.connstr import ConnectionStringError
from edge_certd.diagnose.doctor.probes import probe_env
from edge_certd.diagnose.verify.request import _read_secret_file
from edge_certd.package import check_name
from edge_certd.package.protected import PROTECTED
from edge_certd.store.fsutil import ReadError, read_bounded, read_bytes, write_atomic
from edge_certd.sync import report
from edge_certd.sync.engine import Engine, read_passwords
from edge_certd.sync.metrics import TEXTFILE_NAME


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def trusted(tree: Tree) -> set[str]:
    return {item["sha256"] for item in report.list_cas(tree.load())}


# -- the one safe reader ------------------------------------------------------------------


def test_read_bounded_reads_a_regular_file_and_refuses_every_planted_kind(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"x" * 100)
    with deadline():
        assert read_bounded(str(good), 100) == b"x" * 100
        cases = {
            "fifo": (fifo(tmp_path / "fifo"), r"FIFO \(named pipe\), not a regular file"),
            "zero": (link_to_zero(tmp_path / "zero"), "symbolic link"),
            "big": (sparse(tmp_path / "big"), "larger than 1024 bytes"),
            "dir": (tmp_path, "a directory, not a regular file"),
        }
        for path, reason in cases.values():
            with pytest.raises(ReadError, match=reason) as caught:
                read_bounded(str(path), 1024)
            assert not caught.value.missing and str(path) in str(caught.value)
        with pytest.raises(ReadError, match="a character device"):
            read_bounded(str(tmp_path / "zero"), 1024, follow_links=True)
        with pytest.raises(ReadError) as gone:
            read_bounded(str(tmp_path / "absent"), 1024)
        assert gone.value.missing
        assert read_bytes(str(tmp_path / "absent")) is None
        with pytest.raises(OSError):  # what state readers catch: a FIFO is "cannot be read"
            read_bytes(str(tmp_path / "fifo"))
    assert read_bounded(str(good), 99 + 1) == b"x" * 100  # exactly the limit is allowed
    with pytest.raises(ReadError, match="larger than 99"):
        read_bounded(str(good), 99)


# -- write_atomic never reads the old file through a planted name --------------------------


@pytest.mark.parametrize("plant", [fifo, link_to_zero], ids=["fifo", "link-to-dev-zero"])
def test_write_atomic_replaces_a_planted_old_file_without_reading_it(tmp_path: Path, plant) -> None:  # type: ignore[no-untyped-def]
    target = plant(tmp_path / "edge-certd.prom")
    with deadline():
        assert write_atomic(str(target), b"new\n", 0o644) is True
    info = target.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert target.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge-certd.prom"]  # no temp file left


def test_write_atomic_replaces_a_link_to_equal_content_and_leaves_the_target_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"same")
    elsewhere.chmod(0o644)
    link = tmp_path / "out"
    link.symlink_to(elsewhere)
    assert write_atomic(str(link), b"same", 0o644) is True  # a link is never "equal"
    assert not link.is_symlink() and link.read_bytes() == b"same"
    assert elsewhere.read_bytes() == b"same"


def test_write_atomic_still_skips_an_equal_file_and_writes_a_changed_one(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert write_atomic(str(target), b"abcd", 0o640) is True
    inode = target.stat().st_ino
    assert write_atomic(str(target), b"abcd", 0o640) is False
    assert target.stat().st_ino == inode  # not rewritten
    assert write_atomic(str(target), b"abce", 0o640) is True  # same size, other bytes
    assert write_atomic(str(target), b"abce", 0o600) is True  # same bytes, other mode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_bytes() == b"abce"


@pytest.mark.parametrize("plant", [fifo, link_to_zero], ids=["fifo", "link-to-dev-zero"])
def test_cli_sync_replaces_a_planted_metrics_file(tree: Tree, plant) -> None:  # type: ignore[no-untyped-def]
    textfile_dir = tree.root / "var/lib/prometheus/node-exporter"
    textfile_dir.mkdir(parents=True)
    tree.write_config(metrics__textfile_dir=str(textfile_dir))
    prom = plant(textfile_dir / TEXTFILE_NAME)
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Planted Metrics").cert_pem)
    result = tree.cli("sync", timeout=60)  # the old code hung here inside the state lock
    assert result.returncode == 0, result.stderr
    assert stat.S_ISREG(prom.lstat().st_mode)
    assert "edge_certd_managed_cas 1" in prom.read_text() or "edge_certd_" in prom.read_text()


def test_daemon_keeps_syncing_and_pinging_the_watchdog_with_a_fifo_planted_as_its_metrics(
    tree: Tree,
) -> None:
    textfile_dir = tree.root / "var/lib/prometheus/node-exporter"
    textfile_dir.mkdir(parents=True)
    tree.write_config(metrics__textfile_dir=str(textfile_dir))
    prom = textfile_dir / TEXTFILE_NAME
    with RunningDaemon(tree, watchdog_usec=2_000_000) as daemon:
        daemon.wait_ready()
        for round_, plant in enumerate((fifo, link_to_zero)):
            prom.unlink()
            plant(prom)
            mark = daemon.mark()
            ca = CA.root(f"After Plant {round_}")
            (tree.drop / f"root{round_}.pem").write_bytes(ca.cert_pem)
            daemon.wait_synced(mark, status=f"{round_ + 1} CA")
            assert stat.S_ISREG(prom.lstat().st_mode), "the planted file was replaced"
            pings = daemon.count("WATCHDOG=1")
            daemon.wait_for(lambda f: f.get("WATCHDOG") == "1", daemon.mark(), what="a later WATCHDOG=1")
            assert daemon.count("WATCHDOG=1") > pings
        assert daemon.alive
        assert daemon.stop() == 0


def test_a_fifo_as_the_env_files_old_copy_is_replaced_and_doctor_names_it(tree: Tree) -> None:
    tree.env_file.parent.mkdir(parents=True, exist_ok=True)
    fifo(tree.env_file)
    with deadline():
        assert "FIFO" in (probe_env(str(tree.env_file)).error or "")
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Env Plant").cert_pem)
    result = tree.cli("sync", timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISREG(tree.env_file.lstat().st_mode) and "EDGE_CERTD_ROOTS=" in tree.env_file.read_text()


# -- add: the files a technician names ------------------------------------------------------


def test_add_refuses_a_fifo_and_a_link_out_of_its_directory_at_once(tree: Tree, tmp_path: Path) -> None:
    planted = fifo(tmp_path / "root.pem")
    result = tree.cli("add", str(planted), timeout=60)
    assert result.returncode != 0
    assert "FIFO (named pipe), not a regular file" in result.stdout + result.stderr
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "shadow").write_text("root:secret-hash:\n")
    link = tmp_path / "gw.pem"
    link.symlink_to(secret / "shadow")
    result = tree.cli("add", str(link), timeout=60)
    assert result.returncode != 0 and "outside the source directory" in result.stdout + result.stderr
    assert "secret-hash" not in result.stdout + result.stderr


def test_add_through_the_daemon_refuses_a_fifo_and_the_daemon_lives_on(tree: Tree, tmp_path: Path) -> None:
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        result = tree.cli("add", str(fifo(tmp_path / "root.pem")), timeout=60)
        assert result.returncode != 0 and "FIFO" in result.stdout + result.stderr
        good = tmp_path / "good.pem"
        good.write_bytes(CA.root("Added After FIFO").cert_pem)
        result = tree.cli("add", str(good), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert daemon.alive


def test_add_replaces_a_fifo_raced_in_under_the_name_it_chose(tree: Tree) -> None:
    """`add` chose drop/root.pem, then a technician made it a FIFO before the write: the
    write goes through the same write_atomic, which renames over it without opening it."""
    tree.drop.mkdir(parents=True, exist_ok=True)
    racing = fifo(tree.drop / "root.pem")
    with deadline():
        assert write_atomic(str(racing), CA.root("Raced").cert_pem, 0o644)
    assert stat.S_ISREG(racing.lstat().st_mode)


# -- roots packages: files checked like their directories ----------------------------------


@pytest.fixture
def roots(tree: Tree) -> Path:
    path = tree.root / "usr/share/edge-certd/roots.d"
    path.mkdir(parents=True)
    tree.write_config(package_roots_dir=str(path))
    return path


def test_a_roots_package_file_others_may_write_is_refused_and_a_0644_one_trusted(
    tree: Tree, roots: Path
) -> None:
    package = roots / "contoso-gateway-roots"
    package.mkdir(mode=0o755)
    good, open_ = CA.root("Package 0644"), CA.root("Package 0666")
    (package / "good.pem").write_bytes(good.cert_pem)
    (package / "good.pem").chmod(0o644)
    (package / "open.pem").write_bytes(open_.cert_pem)
    (package / "open.pem").chmod(0o666)
    (package / "group.pem").write_bytes(CA.root("Package 0664").cert_pem)
    (package / "group.pem").chmod(0o664)
    result = Engine(tree.load()).sync()
    assert trusted(tree) == {sha(good)}
    refused = {r.source.rsplit("/", 1)[-1]: r for r in result.rejected}
    assert refused.keys() == {"open.pem", "group.pem"}
    assert all(r.code == "unsafe_mode" for r in refused.values())
    assert "mode 0666" in refused["open.pem"].message and "chmod go-w" in refused["open.pem"].message
    (package / "open.pem").chmod(0o644)  # fixed as the message says: trusted at the next sync
    Engine(tree.load()).sync()
    assert trusted(tree) == {sha(good), sha(open_)}


def test_world_writable_files_are_refused_where_others_can_reach_them_only(
    tree: Tree, tmp_path: Path
) -> None:
    export = tmp_path / "kv"
    export.mkdir(mode=0o755)
    open_ = CA.root("KV 0666")
    (export / "kv.pem").write_bytes(open_.cert_pem)
    (export / "kv.pem").chmod(0o666)
    tree.write_config(keyvault_export_dirs=[str(export)])
    tree.drop.mkdir(parents=True, exist_ok=True)
    tree.drop.chmod(0o2770)  # others cannot reach the drop directory's files
    dropped = CA.root("Drop 0666")
    (tree.drop / "drop.pem").write_bytes(dropped.cert_pem)
    (tree.drop / "drop.pem").chmod(0o666)
    result = Engine(tree.load()).sync()
    assert trusted(tree) == {sha(dropped)}
    (rejection,) = result.rejected
    assert rejection.code == "unsafe_mode" and "chmod o-w" in rejection.message


# -- a link to a hidden key file ----------------------------------------------------------


def test_a_link_to_a_hidden_key_file_is_refused_and_the_hidden_file_tightened(
    tree: Tree, tmp_path: Path
) -> None:
    leaky = CA.root("Hidden Key")
    tree.drop.mkdir(parents=True, exist_ok=True)
    hidden = tree.drop / ".gateway.key.pem"
    hidden.write_bytes(leaky.cert_pem + leaky.key_pem)
    hidden.chmod(0o664)
    (tree.drop / "gateway.pem").symlink_to(hidden.name)
    outside = tmp_path / "outside.pem"  # a link out of the directory: never read, never changed
    outside.write_bytes(leaky.cert_pem + leaky.key_pem)
    outside.chmod(0o664)
    (tree.drop / "elsewhere.pem").symlink_to(outside)
    result = tree.cli("sync")
    assert result.returncode == 3 and "private key" in result.stdout
    assert stat.S_IMODE(hidden.stat().st_mode) == 0o600
    assert (tree.drop / "gateway.pem").is_symlink()  # the link itself is left as it was
    assert hidden.read_bytes() == leaky.cert_pem + leaky.key_pem
    assert stat.S_IMODE(outside.stat().st_mode) == 0o664
    assert trusted(tree) == set()


# -- package --name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["ca-certificates", "libc6", "systemd", "dpkg", "openssl", "base-files", "libssl3t64", "apt"]
)
def test_package_names_the_device_needs_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="a package Debian or the device needs"):
        check_name(name)


@pytest.mark.parametrize("name", ["roots.dpkg-new", "roots.dpkg-tmp", "roots.dpkg-old", "roots.dpkg-dist"])
def test_package_names_ending_like_dpkgs_temporary_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="temporary files"):
        check_name(name)


def test_a_roots_package_name_is_accepted_and_the_list_holds_only_valid_names() -> None:
    check_name("contoso-gateway-roots")
    check_name("ca-certificates-contoso")  # a prefix of a protected name is not that name
    for name in PROTECTED:
        assert name == name.lower() and " " not in name


def test_package_cli_refuses_ca_certificates_with_a_clear_message(tree: Tree, tmp_path: Path) -> None:
    pem = tmp_path / "r.pem"
    pem.write_bytes(CA.root("Would Replace").cert_pem)
    result = tree.cli(
        "package", str(pem), "--name", "ca-certificates", "--version", "1", "--output", str(tmp_path)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "would replace it" in result.stderr
    assert not list(tmp_path.glob("*.deb"))


# -- password, connection-string and configuration files -------------------------------------


def test_planted_password_files_are_skipped_without_hanging(tree: Tree, tmp_path: Path) -> None:
    good = tmp_path / "good.pw"
    good.write_text("s3cret\n")
    planted = [fifo(tmp_path / "fifo.pw"), link_to_zero(tmp_path / "zero.pw"), sparse(tmp_path / "big.pw")]
    tree.write_config(pfx_password_files=[str(p) for p in (*planted, good)])
    with deadline():
        assert read_passwords(tree.load()) == [b"s3cret"]


@pytest.mark.parametrize(
    ("plant", "reason"),
    [(fifo, "FIFO"), (link_to_zero, "symbolic link"), (sparse, "larger than")],
    ids=["fifo", "link-to-dev-zero", "1GB"],
)
def test_a_planted_connection_string_file_is_a_clear_error(tmp_path: Path, plant, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = plant(tmp_path / "connstr")
    with deadline(), pytest.raises(ConnectionStringError, match=reason) as caught:
        _read_secret_file(str(path))
    assert str(path) in str(caught.value)


def test_a_good_connection_string_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "connstr"
    path.write_text("HostName=hub.example;DeviceId=d1;SharedAccessKey=abc=\n")
    assert _read_secret_file(str(path)).startswith("HostName=hub.example")


def test_a_fifo_as_the_configuration_is_a_config_error_not_a_hang(tmp_path: Path) -> None:
    with deadline(), pytest.raises(ConfigError, match="not a regular file"):
        load_config(str(fifo(tmp_path / "config.yaml")))
    with deadline(), pytest.raises(ConfigError, match="not a regular file"):
        load_config(str(link_to_zero(tmp_path / "zero.yaml")))
    assert os.path.exists("/dev/zero")
