"""`edge-certd doctor` on a real temporary trust tree: healthy, then broken one check at a time.

Every device here is the conftest `tree` (the real update-ca-certificates, run against
the tree only) after a real sync of a root made at test time. systemd is faked with a
directory standing in for /run/systemd/system and a systemctl script; the gateway is
a real Python ssl server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.certs import CA, utcnow
from support.loopback import LoopbackServer, free_port, tls_handler
from support.planted import deadline, fifo, link_to_zero, sparse
from support.tree import Tree

from edge_certd.config import load_config
from edge_certd.core.model import InstalledCA
from edge_certd.diagnose import doctor
from edge_certd.diagnose.doctor import probes as doctor_probes
from edge_certd.diagnose.doctor.judge import (
    NO_GATEWAY,
    AziotFacts,
    DirFacts,
    ServiceFacts,
    TargetFacts,
    env_paths,
    judge_clock,
    judge_directory,
    judge_nested_edge,
    judge_service,
    judge_target,
)
from edge_certd.diagnose.verify.model import cert_info
from edge_certd.store.state import StatePaths, state_lock
from edge_certd.sync import operations as actions

LINE = re.compile(r"^\[(pass|warn|fail|skip)\] ([^:]+): (.*)$")


@dataclass
class Device:
    tree: Tree
    root: CA
    systemctl_state: Path  # what the fake `systemctl is-active` answers
    aziot: Path  # stands in for /etc/aziot/config.toml; absent unless a test writes it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.root.der).hexdigest()

    def doctor(self, now: dt.datetime | None = None, **gateway: object) -> tuple[int, str]:
        out = io.StringIO()
        config, path = load_config(str(self.tree.config_path))
        code = doctor.run_doctor(
            config, path, now=now, out=out, aziot_config=str(self.aziot), gateway=gateway
        )
        return code, out.getvalue()


def checks(output: str) -> dict[str, list[tuple[str, str]]]:
    """Check name -> [(status, message)], from doctor's output."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            found.setdefault(match[2], []).append((match[1], match[3]))
    return found


def status(output: str, name: str) -> str:
    entries = checks(output).get(name)
    assert entries, f"no {name} check in:\n{output}"
    assert len(entries) == 1, entries
    return entries[0][0]


def failed(output: str) -> set[str]:
    return {name for name, items in checks(output).items() for s, _ in items if s == "fail"}


def install_root(tree: Tree, root: CA, name: str = "gateway-root.crt") -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    tree.drop.chmod(0o755)
    (tree.drop / name).write_bytes(root.cert_pem)
    result = actions.sync(load_config(str(tree.config_path))[0])
    assert not result.rejected and len(result.managed) >= 1, result


def make_device(tree: Tree, root: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Device:
    systemd_dir = tmp_path / "run-systemd-system"
    systemd_dir.mkdir()
    monkeypatch.setattr(doctor_probes, "SYSTEMD_RUN_DIR", str(systemd_dir))
    state = tmp_path / "service-state"
    state.write_text("active\n")
    systemctl = tmp_path / "systemctl"
    # Prints the state and exits 0 only for "active", as `systemctl is-active` does.
    systemctl.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2" = "is-active edge-certd" ] || exit 64\n'
        f"state=$(cat '{state}')\n"
        'echo "$state"\n'
        '[ "$state" = active ]\n'
    )
    systemctl.chmod(0o755)
    tree.write_config(on_change__systemctl=[str(systemctl)])
    install_root(tree, root)
    return Device(tree, root, state, tmp_path / "etc-aziot" / "config.toml")


@pytest.fixture
def device(tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Device:
    return make_device(tree, CA.root("Doctor Gateway Root"), tmp_path, monkeypatch)


@pytest.fixture
def served() -> Iterator[list[LoopbackServer]]:
    servers: list[LoopbackServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def serve_gateway(root: CA, tmp_path: Path, served: list[LoopbackServer]) -> int:
    """A TLS gateway on 127.0.0.1 presenting server + edge CA, issued under `root`."""
    edge = root.intermediate("Edge CA doctor-gw")
    leaf = edge.issue_server("doctor-gw", ["localhost", "127.0.0.1"])
    cert, key = leaf.write(tmp_path / f"gateway-{len(served)}")
    server = LoopbackServer(tls_handler(cert, key))
    served.append(server)
    return server.port


# --------------------------------------------------------------------------- healthy


def test_healthy_device_passes_every_check(device: Device) -> None:
    code, out = device.doctor()
    assert code == 0, out
    assert f"[pass] config: {device.tree.config_path} is valid" in out
    found = checks(out)
    assert list(found) == [
        "config",
        "drop dir",
        "service",
        "managed CAs",
        "ca_dir",
        "system bundle",
        "edge-roots.pem",
        "java truststore",
        "env file",
        "expiry",
        "clock",
        "nested edge",
        "rejected files",
        "keys in sources",
        "removed CAs",
        "gateway watch",
        "gateway",
    ]
    assert status(out, "java truststore") == "skip"  # bundles.java: off in this tree
    assert status(out, "nested edge") == "skip"  # no IoT Edge config.toml
    assert found["gateway"] == [("skip", NO_GATEWAY)]
    assert status(out, "gateway watch") == "skip"  # nothing to watch either
    others = {name: items[0][0] for name, items in found.items()}
    del others["java truststore"], others["nested edge"], others["gateway"], others["gateway watch"]
    assert set(others.values()) == {"pass"}, out
    # The gateway was not checked, so doctor never says that every check passed.
    assert "every check passed" not in out
    assert out.rstrip().endswith(
        "doctor: no check failed, but no gateway was checked (edge-certd doctor HOST[:PORT])"
    )


def test_healthy_device_with_gateway_verified_over_real_tls(
    device: Device, tmp_path: Path, served: list[LoopbackServer]
) -> None:
    port = serve_gateway(device.root, tmp_path, served)
    device.tree.write_config(gateway__host=f"localhost:{port}", gateway__timeout=30)
    code, out = device.doctor()
    assert code == 0, out
    (gateway,) = checks(out)["gateway"]
    assert gateway[0] == "pass", out
    assert (
        f"localhost:{port} (mqtts) is reachable and trusted by system store, edge-roots.pem, ca-bundle.pem ("
        in gateway[1]
    )
    assert "Verification: OK" in gateway[1]


def test_cli_doctor_exits_0_on_a_healthy_device(device: Device) -> None:
    result = device.tree.cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[pass] config: {device.tree.config_path} is valid" in result.stdout
    # A real subprocess sees the real /run/systemd/system: skip here, or the fake systemctl.
    assert status(result.stdout, "service") in ("skip", "pass")


def test_invalid_config_stops_doctor_with_exit_2(tree: Tree) -> None:
    tree.config_path.write_text("drop_dir: relative/path\nno_such_key: 1\n")
    result = tree.cli("doctor")
    assert result.returncode == 2
    assert f"[fail] config: {tree.config_path} is invalid" in result.stdout
    assert "invalid configuration" in result.stderr
    assert "no_such_key: unknown key" in result.stderr


# --------------------------------------------------------------------------- source directories


def test_world_writable_drop_dir_fails(device: Device) -> None:
    device.tree.drop.chmod(0o777)
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"drop dir"}, out
    (item,) = checks(out)["drop dir"]
    assert "is world-writable (mode 0777)" in item[1]
    assert f"fix: run: chmod o-w {device.tree.drop}" in out


def test_missing_drop_dir_fails(device: Device) -> None:
    for entry in device.tree.drop.iterdir():
        entry.unlink()
    device.tree.drop.rmdir()
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"drop dir"}, out
    assert f"[fail] drop dir: {device.tree.drop} does not exist" in out


def test_missing_keyvault_dir_passes_as_not_exported_yet(device: Device, tmp_path: Path) -> None:
    exported = tmp_path / "kv-exported"
    exported.mkdir(mode=0o755)
    missing = tmp_path / "kv-not-yet"
    device.tree.write_config(keyvault_export_dirs=[str(exported), str(missing)])
    code, out = device.doctor()
    assert code == 0, out
    assert checks(out)["keyvault dir"] == [
        ("pass", f"{exported} is safe (mode 0755, owner {_owner(exported)})"),
        ("pass", f"{missing} does not exist: not exported yet"),
    ]


def _owner(path: Path) -> str:
    return f"{path.owner()}:{path.group()}"


# --------------------------------------------------------------------------- service


def test_inactive_service_fails(device: Device) -> None:
    device.systemctl_state.write_text("inactive\n")
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"service"}, out
    assert "[fail] service: edge-certd is inactive" in out
    assert "fix: systemctl enable --now edge-certd" in out


def test_without_systemd_the_service_is_skipped(
    device: Device, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor_probes, "SYSTEMD_RUN_DIR", str(tmp_path / "no-such-dir"))
    device.systemctl_state.write_text("inactive\n")  # never asked
    code, out = device.doctor()
    assert code == 0, out
    assert "[skip] service: no systemd" in out


# --------------------------------------------------------------------------- trust targets


def test_ca_file_deleted_from_ca_dir_fails(device: Device) -> None:
    (crt,) = device.tree.ca_dir.glob("*.crt")
    crt.unlink()
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"ca_dir"}, out
    assert f"sha256 {device.sha256[:16]}" in checks(out)["ca_dir"][0][1]


def test_ca_missing_from_the_system_bundle_fails(device: Device) -> None:
    bundle = device.tree.system_bundle
    text = bundle.read_text()
    kept = [block for block in PEM.findall(text) if _sha256_of(block) != device.sha256]
    assert len(kept) == len(PEM.findall(text)) - 1
    bundle.write_text("".join(kept))
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"system bundle"}, out
    assert "fix: run update-ca-certificates" in out


PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.S)


def _sha256_of(block: str) -> str:
    body = "".join(block.strip().splitlines()[1:-1])
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def test_missing_edge_roots_entry_fails(device: Device) -> None:
    device.tree.edge_roots.write_text("")
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"edge-roots.pem"}, out


def test_java_truststore_is_checked_when_enabled(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.write_config(bundles__java="jks")
    dev = make_device(tree, CA.root("Doctor Java Root"), tmp_path, monkeypatch)
    code, out = dev.doctor()
    assert code == 0, out
    assert status(out, "java truststore") == "pass"
    (tree.bundles / "java-truststore.jks").unlink()
    code, out = dev.doctor()
    assert code == 1
    # The env file names the truststore too, so it notices the same loss.
    assert failed(out) == {"java truststore", "env file"}, out
    assert "EDGE_CERTD_JAVA_TRUSTSTORE=" in checks(out)["env file"][0][1]


def test_corrupt_manifest_fails(device: Device) -> None:
    Path(StatePaths(str(device.tree.state)).manifest).write_text("{not json")
    code, out = device.doctor()
    assert code == 1
    assert "managed CAs" in failed(out), out
    assert "is corrupt" in checks(out)["managed CAs"][0][1]


def test_a_sync_holding_the_lock_fails_instead_of_judging_half_applied_trust(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_probes, "LOCK_WAIT", 0.2)
    with state_lock(StatePaths(str(device.tree.state))):
        code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"trust targets"}, out
    assert "[fail] trust targets: another edge-certd process has held" in out
    assert status(out, "managed CAs") == "pass"  # read anyway: the manifest is atomic
    assert "ca_dir" not in checks(out)


# --------------------------------------------------------------------------- env file


def test_missing_env_file_fails(device: Device) -> None:
    device.tree.env_file.unlink()
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"env file"}, out
    assert f"[fail] env file: {device.tree.env_file} is missing" in out


def test_env_file_pointing_at_a_missing_file_fails(device: Device) -> None:
    ca_bundle = device.tree.bundles / "ca-bundle.pem"
    ca_bundle.unlink()
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"env file"}, out
    assert f"REQUESTS_CA_BUNDLE={ca_bundle}" in checks(out)["env file"][0][1]


def test_env_paths_reads_what_a_shell_and_systemd_read() -> None:
    text = (
        "# comment\n\nNODE_EXTRA_CA_CERTS=/a/edge-roots.pem\nexport B='/b c.pem'\n"
        'JAVA="/j.p12"\nTYPE=PKCS12\nOPTS="-Djavax.net.ssl.trustStore=/j.p12"\nnot a line\n'
    )
    assert list(env_paths(text)) == [
        ("NODE_EXTRA_CA_CERTS", "/a/edge-roots.pem"),
        ("B", "/b c.pem"),
        ("JAVA", "/j.p12"),
    ]


# --------------------------------------------------------------------------- expiry and clock


def test_ca_expiring_within_the_window_warns_but_does_not_fail(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    soon = CA.root("Doctor Short Root", not_after=utcnow() + dt.timedelta(days=5))
    dev = make_device(tree, soon, tmp_path, monkeypatch)
    code, out = dev.doctor()
    assert code == 0, out  # a warning never fails, as in verify
    (item,) = checks(out)["expiry"]
    assert item[0] == "warn"
    assert "expires on" in item[1] and "within the 30-day warning window" in item[1]
    assert "no check failed; 1 warning" in out


def test_expired_managed_ca_fails(device: Device) -> None:
    later = cert_info(device.root.der).not_after + dt.timedelta(days=1)
    code, out = device.doctor(now=later)
    assert code == 1
    assert failed(out) == {"expiry"}, out


def test_clock_before_the_newest_ca_fails(device: Device) -> None:
    start = cert_info(device.root.der).not_before
    code, out = device.doctor(now=start - dt.timedelta(days=400))
    assert code == 1
    assert failed(out) == {"clock"}, out
    assert "timedatectl set-ntp true" in out


def test_clock_judge_uses_the_newest_not_before() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def ca(name: str, start: dt.datetime) -> InstalledCA:
        return InstalledCA(
            sha256=name,
            subject=name,
            not_before=start,
            not_after=start + dt.timedelta(days=3650),
            path="",
            sources=(),
            installed_at=start,
        )

    old = ca("CN=Old", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    new = ca("CN=New", dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
    assert judge_clock([old], now).status == "pass"
    failing = judge_clock([old, new], now)
    assert failing.status == "fail" and "before CN=New became valid" in failing.message
    assert judge_clock([], now).status == "skip"


# --------------------------------------------------------------------------- gateway


def test_gateway_on_a_closed_loopback_port_fails(device: Device) -> None:
    port = free_port()
    device.tree.write_config(gateway__host=f"127.0.0.1:{port}", gateway__timeout=3)
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"gateway"}, out
    assert f"[fail] gateway: 127.0.0.1:{port} (mqtts): connection refused on port {port}" in out
    assert "8883 (MQTTS), 5671 (AMQPS) and 443 (HTTPS)" in out


def test_gateway_under_a_root_that_is_not_installed_fails(
    device: Device, tmp_path: Path, served: list[LoopbackServer]
) -> None:
    port = serve_gateway(CA.root("Some Other Root"), tmp_path, served)
    device.tree.write_config(gateway__host=f"localhost:{port}", gateway__timeout=30)
    code, out = device.doctor()
    assert code == 1
    assert failed(out) == {"gateway"}, out
    assert f"into the drop directory {device.tree.drop}" in out


def test_gateway_connection_string_without_gateway_hostname_fails(device: Device, tmp_path: Path) -> None:
    secret = "c2VjcmV0LWtleS1ub3QtcHJpbnRlZA=="
    cs = tmp_path / "device.connstr"
    cs.write_text(f"HostName=hub.azure-devices.net;DeviceId=d1;SharedAccessKey={secret}\n")
    device.tree.write_config(gateway__connection_string_file=str(cs))
    code, out = device.doctor()
    assert code == 1
    assert "no GatewayHostName" in checks(out)["gateway"][0][1]
    assert secret not in out


# --------------------------------------------------------------------------- pure judges


# --------------------------------------------------------------------------- nested IoT Edge


def write_aziot(device: Device, trust_bundle_cert: str | None, extra: str = "") -> None:
    """An IoT Edge config.toml as aziotctl reads it, with the keys around it a child has."""
    device.aziot.parent.mkdir(parents=True, exist_ok=True)
    lines = ['hostname = "child-01"', 'parent_hostname = "gateway.contoso.example"']
    if trust_bundle_cert is not None:
        lines.append(f'trust_bundle_cert = "{trust_bundle_cert}"')
    lines += ["", "[provisioning]", 'source = "manual"', extra]
    device.aziot.write_text("\n".join(lines) + "\n")


def nested(device: Device) -> tuple[str, str]:
    code, out = device.doctor()
    (found,) = checks(out)["nested edge"]
    if found[0] == "fail":
        assert code == 1, out
    return found


def test_trust_bundle_cert_pointing_at_edge_roots_passes(device: Device) -> None:
    write_aziot(device, f"file://{device.tree.edge_roots}")
    state, message = nested(device)
    assert state == "pass", message
    assert "edge-certd's edge-roots.pem (1 managed CA)" in message


def test_trust_bundle_cert_as_a_bare_path_is_read_as_the_same_file(device: Device) -> None:
    write_aziot(device, str(device.tree.edge_roots))
    assert nested(device)[0] == "pass"


def test_trust_bundle_cert_naming_a_file_without_the_managed_root_fails(
    device: Device, tmp_path: Path
) -> None:
    other = tmp_path / "old-trust-bundle.pem"
    other.write_bytes(CA.root("Some Other Root").cert_pem)
    write_aziot(device, f"file://{other}")
    code, out = device.doctor()
    assert code == 1
    (found,) = checks(out)["nested edge"]
    assert found[0] == "fail"
    assert f"CN=Doctor Gateway Root,O=edge-certd tests (sha256 {device.sha256[:16]})" in found[1]
    assert "lacks 1 of 1 managed CA: " in found[1]
    assert f'trust_bundle_cert = "file://{device.tree.edge_roots}"' in out
    assert "iotedge config apply" in out


def test_a_copy_that_holds_the_roots_today_warns_it_will_not_follow_a_rotation(
    device: Device, tmp_path: Path
) -> None:
    copy = tmp_path / "trust-bundle.pem"
    copy.write_bytes(device.tree.edge_roots.read_bytes())
    write_aziot(device, f"file://{copy}")
    state, message = nested(device)
    assert state == "warn" and "is a copy" in message
    assert device.doctor()[0] == 0  # a warning never fails doctor


def test_trust_bundle_cert_naming_a_missing_file_fails(device: Device, tmp_path: Path) -> None:
    write_aziot(device, f"file://{tmp_path / 'gone.pem'}")
    state, message = nested(device)
    assert state == "fail" and "gone.pem" in message


def test_a_child_without_trust_bundle_cert_warns(device: Device) -> None:
    write_aziot(device, None)
    state, message = nested(device)
    assert state == "warn" and "has no trust_bundle_cert" in message


def test_trust_bundle_cert_that_is_not_a_file_uri_fails(device: Device) -> None:
    write_aziot(device, "https://example.invalid/bundle.pem")
    assert nested(device)[0] == "fail"


def test_unparsable_aziot_config_fails(device: Device) -> None:
    device.aziot.parent.mkdir(parents=True, exist_ok=True)
    device.aziot.write_text("trust_bundle_cert = \n[[[")
    state, message = nested(device)
    assert state == "fail" and "cannot be read" in message


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (fifo, "is a FIFO (named pipe), not a regular file"),
        (link_to_zero, "is a symbolic link"),
        (lambda p: sparse(p, 2 * 1024 * 1024), "is larger than"),
        (lambda p: p.write_text("a = " + "[" * 100_000) and p, "nest too deeply"),
        (lambda p: p.write_text("trust_bundle_cert = " + "{a = " * 100_000) and p, "nest too deeply"),
    ],
    ids=["fifo", "link-to-dev-zero", "2MB", "arrays-100000-deep", "tables-100000-deep"],
)
def test_a_planted_aziot_config_is_one_clear_doctor_line(device: Device, plant, reason: str) -> None:  # type: ignore[no-untyped-def]
    device.aziot.parent.mkdir(parents=True, exist_ok=True)
    plant(device.aziot)
    with deadline():
        state, message = nested(device)
    assert state == "fail" and reason in message, message
    assert str(device.aziot) in message


def test_a_trust_bundle_cert_naming_a_fifo_is_one_clear_doctor_line(device: Device, tmp_path: Path) -> None:
    write_aziot(device, f"file://{fifo(tmp_path / 'bundle.pem')}")
    with deadline():
        state, message = nested(device)
    assert state == "fail" and "FIFO" in message, message


def test_judges_name_the_cause_without_touching_the_disk() -> None:
    drop = judge_directory(
        DirFacts(
            "/d",
            "drop",
            exists=True,
            problem=("is world-writable (mode 0777), so anyone could; run: chmod o-w /d"),
        )
    )
    assert (drop.status, drop.fix) == ("fail", "run: chmod o-w /d")
    assert judge_service(ServiceFacts(systemd=True, state="failed")).status == "fail"
    assert judge_service(ServiceFacts(systemd=True, state="active")).status == "pass"
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    entry = InstalledCA(
        sha256="ab" * 32,
        subject="CN=R",
        not_before=start,
        not_after=start,
        path="",
        sources=(),
        installed_at=start,
    )
    assert judge_target(TargetFacts("ca_dir", "/x", frozenset()), [entry]).status == "fail"
    assert judge_target(TargetFacts("ca_dir", "/x", frozenset({"ab" * 32})), [entry]).status == "pass"
    assert judge_target(TargetFacts("java truststore", "", None, "off"), [entry]).status == "skip"
    roots = "/b/edge-roots.pem"
    aziot = AziotFacts("/etc/aziot/config.toml", present=True, edge_roots=roots, trust_bundle_cert="x")
    assert judge_nested_edge(aziot, [entry]).status == "fail"  # not a file:// URI
    ours = dataclasses.replace(aziot, bundle_path=roots, installed=frozenset({"ab" * 32}))
    assert judge_nested_edge(ours, [entry]).status == "pass"
    assert judge_nested_edge(dataclasses.replace(ours, bundle_path="/copy.pem"), [entry]).status == "warn"
    assert judge_nested_edge(dataclasses.replace(ours, installed=frozenset()), [entry]).status == "fail"
    assert judge_nested_edge(dataclasses.replace(ours, present=False), [entry]).status == "skip"


# --------------------------------------------------------------------------- the sources and the gateway


def fixes(output: str, name: str) -> list[str]:
    """The `fix:` lines printed under check `name`."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = LINE.match(line)
        if match and match[2] == name and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("fix: "):
            found.append(lines[i + 1].strip().removeprefix("fix: "))
    return found


def test_rejected_files_are_a_doctor_check_naming_file_and_reason(device: Device) -> None:
    edge = device.root.intermediate("Edge CA rejected")
    (device.tree.drop / "gateway-leaf.pem").write_bytes(edge.issue_server("gw", ["gw.local"]).cert_pem)
    (device.tree.drop / "edge-ca.pem").write_bytes(edge.cert_pem)
    actions.sync(load_config(str(device.tree.config_path))[0])
    code, out = device.doctor()
    ((state, message),) = checks(out)["rejected files"]
    assert state == "warn", out
    assert "2 files rejected" in message
    assert "gateway-leaf.pem (not_ca:" in message and "edge-ca.pem (not_self_signed:" in message
    assert status(out, "keys in sources") == "pass"


def test_a_private_key_left_in_the_drop_directory_fails_doctor(device: Device) -> None:
    leaf = device.root.issue_server("gw", ["gw.local"])
    (device.tree.drop / "gateway.key").write_bytes(leaf.key_pem)
    actions.sync(load_config(str(device.tree.config_path))[0])
    code, out = device.doctor()
    assert code == 1
    ((state, message),) = checks(out)["keys in sources"]
    assert state == "fail" and "gateway.key" in message
    assert "treat the key as exposed" in fixes(out, "keys in sources")[0]
    assert "gateway.key" not in checks(out)["rejected files"][0][1]  # said once, where it belongs


def test_a_removed_root_is_named_and_every_fix_says_edge_certd_add(
    device: Device, tmp_path: Path, served: list[LoopbackServer]
) -> None:
    port = serve_gateway(device.root, tmp_path, served)
    config = load_config(str(device.tree.config_path))[0]
    actions.remove(config, device.sha256[:12])
    code, out = device.doctor(target=f"localhost:{port}", timeout=3.0)
    assert code == 1, out
    ((state, message),) = checks(out)["removed CAs"]
    assert state == "warn" and "CN=Doctor Gateway Root" in message and device.sha256[:16] in message
    assert status(out, "gateway") == "fail"
    for name in ("removed CAs", "managed CAs", "gateway"):
        (fix,) = fixes(out, name)
        assert "edge-certd add FILE" in fix, (name, fix)
        assert "copy the root CA" not in fix and "into the drop directory" not in fix, fix
    checked = device.tree.cli("verify", f"localhost:{port}", "--timeout", "3")
    assert checked.returncode == 1
    verify_fixes = [line for line in checked.stdout.splitlines() if line.startswith("Fix:")]
    assert verify_fixes and all("edge-certd add FILE" in line for line in verify_fixes), checked.stdout
    # `add` brings it back, and the advice goes with it.
    assert device.tree.cli("add", str(device.tree.drop / "gateway-root.crt")).returncode == 0
    code, out = device.doctor(target=f"localhost:{port}", timeout=3.0)
    assert code == 0, out
    assert status(out, "removed CAs") == "pass"


def test_a_root_that_was_never_there_still_gets_the_drop_directory_fix(
    device: Device, tmp_path: Path, served: list[LoopbackServer]
) -> None:
    port = serve_gateway(CA.root("Another Gateway Root"), tmp_path, served)
    code, out = device.doctor(target=f"localhost:{port}", timeout=3.0)
    assert code == 1
    (fix,) = fixes(out, "gateway")
    assert "into the drop directory" in fix and "edge-certd add" not in fix


def test_doctor_takes_verifys_gateway_arguments(
    device: Device, tmp_path: Path, served: list[LoopbackServer]
) -> None:
    port = serve_gateway(device.root, tmp_path, served)
    result = device.tree.cli("doctor", f"localhost:{port}", "--timeout", "3", "--protocol", "https")
    assert result.returncode in (0, 1), result.stderr  # the service line depends on this host
    ((state, message),) = checks(result.stdout)["gateway"]
    assert state == "pass", result.stdout
    assert f"localhost:{port} (https)" in message
    assert "no gateway was checked" not in result.stdout
    # The same bad argument verify refuses is a failed gateway line, never a traceback.
    bad = device.tree.cli("doctor", "localhost:99999")
    assert "Traceback" not in bad.stderr
    assert status(bad.stdout, "gateway") == "fail" and "1 to 65535" in bad.stdout


def test_without_java_the_java_line_is_information_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_certd.targets import java

    monkeypatch.setattr(java.shutil, "which", lambda _name: None)
    monkeypatch.setattr(java, "_cryptography_writes_pkcs12", lambda: False)
    store_type, reason = java._choose("auto")
    assert store_type is None
    check = judge_target(TargetFacts("java truststore", "", None, reason), [])
    assert check.status == "skip" and "install" not in check.line() and "no Java" in check.line()
    # Asked for explicitly (bundles.java: pkcs12), a missing Java is something to fix.
    assert "install a Java runtime" in java._choose("pkcs12")[1]
