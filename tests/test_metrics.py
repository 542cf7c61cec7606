"""edge-certd.prom: what node_exporter's textfile collector reads, checked against `list` and
`status`, against prometheus_client's own parser and against `promtool check metrics`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.tree import Tree, require_tool

from edge_certd.config import parse_config
from edge_certd.core.errors import ConfigError
from edge_certd.core.model import FileVerdict, InstalledCA, Reason, Rejection, SyncResult
from edge_certd.sync.metrics import MAX_LABEL, TEXTFILE_NAME, DaemonState, families, label_value, render


def sha(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


@pytest.fixture
def textfile_dir(tree: Tree) -> Path:
    directory = tree.root / "var/lib/prometheus/node-exporter"
    directory.mkdir(parents=True)
    tree.write_config(metrics__textfile_dir=str(directory))
    return directory


def samples(prom: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]}, parsed by prometheus_client's parser."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for s in family.samples:
            found.setdefault(s.name, []).append((dict(s.labels), s.value))
    return found


def value(prom: Path, name: str) -> float:
    ((labels, v),) = samples(prom)[name]
    assert labels == {}
    return v


def listed(tree: Tree) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(tree.cli("list", "--json").stdout)["trusted"]
    return out


def promtool_accepts(prom: Path) -> None:
    promtool = require_tool("promtool")
    with prom.open("rb") as handle:
        r = subprocess.run([promtool, "check", "metrics"], stdin=handle, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sync_writes_metrics_that_agree_with_list_after_a_drop_and_a_removal(
    tree: Tree, textfile_dir: Path
) -> None:
    root = CA.root("Metrics Root")
    dropped = tree.drop / "root.pem"
    dropped.parent.mkdir(parents=True, exist_ok=True)
    dropped.write_bytes(root.cert_pem)
    assert tree.cli("sync").returncode == 0
    prom = textfile_dir / TEXTFILE_NAME
    (ca,) = listed(tree)
    assert value(prom, "edge_certd_trusted_cas") == 1
    ((labels, not_after),) = samples(prom)["edge_certd_ca_not_after_timestamp_seconds"]
    assert labels == {"sha256": sha(root), "subject": ca["subject"]}
    assert not_after == dt.datetime.fromisoformat(str(ca["not_after"]).replace("Z", "+00:00")).timestamp()
    assert value(prom, "edge_certd_last_sync_success") == 1
    assert value(prom, "edge_certd_update_runs_total") == 1
    assert value(prom, "edge_certd_degraded") == 0
    assert samples(prom)["edge_certd_info"] == [({"version": __import__("edge_certd").__version__}, 1.0)]
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter runs as prometheus
    promtool_accepts(prom)

    dropped.unlink()
    assert tree.cli("sync").returncode == 0
    assert listed(tree) == []
    assert value(prom, "edge_certd_trusted_cas") == 0
    assert "edge_certd_ca_not_after_timestamp_seconds" not in samples(prom)
    assert value(prom, "edge_certd_update_runs_total") == 2
    assert os.listdir(textfile_dir) == [TEXTFILE_NAME]  # no temp file left for node_exporter
    promtool_accepts(prom)


def test_rejected_files_are_counted_by_reason_and_never_named(tree: Tree, textfile_dir: Path) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "secret-customer-name.pem").write_bytes(b"not a certificate")
    leaf = CA.root("Leaf Issuer").issue_server("device", ["device.local"])
    (tree.drop / "leaf.pem").write_bytes(leaf.cert_pem)
    assert tree.cli("sync").returncode == 3
    prom = textfile_dir / TEXTFILE_NAME
    status = json.loads(tree.cli("status", "--json").stdout)
    assert value(prom, "edge_certd_rejected_files") == status["rejected_files_total"] == 2
    by_reason = {labels["reason"]: v for labels, v in samples(prom)["edge_certd_rejected_files_by_reason"]}
    assert by_reason == {k: float(v) for k, v in status["rejected_files_by_reason"].items()}
    assert sum(by_reason.values()) == 2
    text = prom.read_text()
    assert "secret-customer-name" not in text and "leaf.pem" not in text
    promtool_accepts(prom)


def test_a_failed_update_is_counted_and_reported_as_no_success(tree: Tree, textfile_dir: Path) -> None:
    tree.write_config(trust_store__update_command=["/bin/false"])
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Never Applied").cert_pem)
    assert tree.cli("sync").returncode == 1
    prom = textfile_dir / TEXTFILE_NAME
    assert value(prom, "edge_certd_last_sync_success") == 0
    assert value(prom, "edge_certd_update_runs_total") == 1
    assert value(prom, "edge_certd_trusted_cas") == 0  # the old state stays, and it was empty
    assert tree.cli("sync").returncode == 1
    assert value(prom, "edge_certd_update_runs_total") == 2  # persisted across processes


def test_auto_writes_nothing_without_the_directory_and_never_writes_nothing(tree: Tree) -> None:
    absent = tree.root / "no-node-exporter"
    tree.write_config(metrics__textfile_dir=str(absent))
    assert tree.cli("sync").returncode == 0
    assert not absent.exists()
    present = tree.root / "node-exporter"
    present.mkdir()
    tree.write_config(metrics__textfile_dir=str(present), metrics__textfile="never")
    assert tree.cli("sync").returncode == 0
    assert os.listdir(present) == []
    tree.write_config(metrics__textfile_dir=str(absent), metrics__textfile="always")
    assert tree.cli("sync").returncode == 0
    assert os.listdir(absent) == [TEXTFILE_NAME]


def test_daemon_writes_its_state_and_expiry_checks(tree: Tree, textfile_dir: Path) -> None:
    prom = textfile_dir / TEXTFILE_NAME
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        assert value(prom, "edge_certd_degraded") == 0
        assert "edge_certd_last_expiry_check_timestamp_seconds" in samples(prom)
        assert daemon.stop() == 0
    assert value(prom, "edge_certd_degraded") == 0
    # A daemon that cannot apply says so in the metrics, as in STATUS=.
    tree.write_config(trust_store__update_command=["/bin/false"])
    (tree.drop / "root.pem").write_bytes(CA.root("Degrading").cert_pem)
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        assert daemon.last_status().startswith("degraded")
        assert value(prom, "edge_certd_degraded") == 1
        assert value(prom, "edge_certd_last_sync_success") == 0


# ------------------------------------------------------------------------ pure rendering


WHEN = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _ca(sha256: str, subject: str, not_after: dt.datetime = WHEN) -> InstalledCA:
    return InstalledCA(
        sha256=sha256,
        subject=subject,
        not_before=WHEN - dt.timedelta(days=1),
        not_after=not_after,
        path=f"/ca/{sha256[:16]}.crt",
        sources=("/srv/drop/x.pem",),
        installed_at=WHEN,
    )


def _render(result: SyncResult, max_ca_series: int = 100) -> bytes:
    return render(families(result, DaemonState(), update_runs=0, max_ca_series=max_ca_series))


def test_hostile_subject_is_escaped_bounded_and_still_valid(tmp_path: Path) -> None:
    hostile = 'CN=a"b\\c\nforged_metric 1\x1b[2J' + "x" * 500
    prom = tmp_path / "x.prom"
    prom.write_bytes(_render(SyncResult(time=WHEN, managed={"ab" * 32: _ca("ab" * 32, hostile)})))
    ((labels, v),) = samples(prom)["edge_certd_ca_not_after_timestamp_seconds"]
    assert labels["subject"] == label_value(hostile) and len(labels["subject"]) <= MAX_LABEL
    assert "\n" not in labels["subject"] and v == WHEN.timestamp()
    assert "forged_metric" not in samples(prom)
    promtool_accepts(prom)


def test_ca_series_are_bounded_soonest_first() -> None:
    cas = [_ca(f"{i:064x}", f"CN=r{i}", WHEN + dt.timedelta(days=i)) for i in range(5)]
    result = SyncResult(time=WHEN, managed={ca.sha256: ca for ca in reversed(cas)})
    found = {f.name: f for f in families(result, DaemonState(), update_runs=0, max_ca_series=2)}
    kept = found["edge_certd_ca_not_after_timestamp_seconds"].samples
    assert [s.labels["subject"] for s in kept] == ["CN=r0", "CN=r1"]
    assert found["edge_certd_ca_series_omitted"].samples[0].value == 3
    assert found["edge_certd_trusted_cas"].samples[0].value == 5


def test_the_fleet_view_names_each_root_by_fingerprint_alone_latest_to_expire_first() -> None:
    cas = [_ca(f"{i:064x}", f"CN=r{i}", WHEN + dt.timedelta(days=i)) for i in range(5)]
    result = SyncResult(time=WHEN, managed={ca.sha256: ca for ca in cas})
    found = {f.name: f for f in families(result, DaemonState(), update_runs=0, max_ca_series=2)}
    kept = found["edge_certd_ca_trusted"].samples
    # The new root of a rotation expires last: under the cap it is the one kept.
    assert [s.labels for s in kept] == [{"sha256": f"{3:064x}"}, {"sha256": f"{4:064x}"}]
    assert {s.value for s in kept} == {1.0}


def test_no_root_is_claimed_trusted_before_the_first_sync() -> None:
    found = {f.name: f for f in families(None, DaemonState(), update_runs=0, max_ca_series=100)}
    assert found["edge_certd_ca_trusted"].samples == []


def test_a_file_counts_once_per_reason_however_many_certificates_it_refused() -> None:
    def rejection(source: str, code: Reason) -> Rejection:
        return Rejection(source=source, code=code, message="m")

    bundle = FileVerdict(
        source="/srv/drop/leaves.pem",
        format="pem",
        rejected=tuple(rejection("/srv/drop/leaves.pem", Reason.NOT_CA) for _ in range(1000)),
    )
    mixed = FileVerdict(
        source="/srv/drop/mixed.pem",
        format="pem",
        rejected=(rejection("m", Reason.NOT_CA), rejection("m", Reason.EXPIRED)),
    )
    result = SyncResult(time=WHEN, verdicts=(bundle, mixed))
    found = {f.name: f for f in families(result, DaemonState(), update_runs=0, max_ca_series=100)}
    reasons = {s.labels["reason"]: s.value for s in found["edge_certd_rejected_files_by_reason"].samples}
    assert reasons == {"not_ca": 2, "expired": 1}
    assert found["edge_certd_rejected_files"].samples[0].value == 2


def test_same_state_renders_the_same_bytes() -> None:
    cas = [_ca("cd" * 32, "CN=b"), _ca("ab" * 32, "CN=a")]
    one = SyncResult(time=WHEN, managed={ca.sha256: ca for ca in cas})
    other = SyncResult(time=WHEN, managed={ca.sha256: ca for ca in reversed(cas)})
    assert _render(one) == _render(other)


def test_before_the_first_sync_no_sync_time_or_success_is_claimed() -> None:
    names = {f.name for f in families(None, DaemonState(), update_runs=0, max_ca_series=100)}
    assert "edge_certd_trusted_cas" in names
    assert "edge_certd_last_sync_success" not in names
    assert "edge_certd_last_sync_timestamp_seconds" not in names


# ------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("metrics: {textfile_dir: relative/dir}", "metrics.textfile_dir: must be an absolute path"),
        ("metrics: {max_ca_series: 0}", "metrics.max_ca_series: must be a number from 1 to 10000"),
        ("metrics: {textfile: sometimes}", "metrics.textfile"),
        (
            "drop_dir: /srv/drop\nmetrics: {textfile_dir: /srv/drop/prom}",
            "metrics.textfile_dir: must not be inside the source directory",
        ),
    ],
)
def test_bad_metrics_settings_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert complaint in str(caught.value)


def test_metrics_defaults_follow_debians_node_exporter() -> None:
    metrics = parse_config("").metrics
    assert (metrics.textfile, metrics.textfile_dir) == ("auto", "/var/lib/prometheus/node-exporter")
