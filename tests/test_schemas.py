"""Every `--json` output carries its schema_version and validates against its JSON Schema.

The outputs are real: the CLI run in a subprocess against a temporary tree, a daemon, a
loopback TLS server. The schemas stay open for consumers (a new key is not a new version),
so the tests also validate against a strict copy that refuses any key the schema does not
describe: an output that grows a key without its schema fails here.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support.certs import CA
from support.daemonrun import RunningDaemon
from support.loopback import free_port
from support.tlsserver import tls_server
from support.tree import Tree

from edge_certd.core.schema import SCHEMA_VERSIONS

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "edge_certd" / "schemas"


def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return doc


def strict(node: Any) -> Any:
    """A copy in which every object with `properties` refuses keys it does not list."""
    node = copy.deepcopy(node)
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "properties" in item and "additionalProperties" not in item:
                item["additionalProperties"] = False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return node


def validate(name: str, doc: Any) -> None:
    assert doc["schema_version"] == SCHEMA_VERSIONS[name]
    for candidate in (schema(name), strict(schema(name))):
        jsonschema.Draft202012Validator(candidate, format_checker=jsonschema.FormatChecker()).validate(doc)


def run_json(tree: Tree, *args: str, code: int = 0) -> Any:
    proc = tree.cli(*args, "--json")
    assert proc.returncode == code, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", sorted(SCHEMA_VERSIONS))
def test_each_schema_is_a_valid_2020_12_schema_with_its_version(name: str) -> None:
    doc = schema(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["properties"]["schema_version"] == {"const": SCHEMA_VERSIONS[name]}
    assert "schema_version" in doc["required"]


def test_every_schema_file_is_a_known_document() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(
        f"{n}.schema.json" for n in SCHEMA_VERSIONS
    )


def test_list_and_status_validate_before_and_after_a_sync(tree: Tree) -> None:
    validate("list", run_json(tree, "list"))
    validate("status", run_json(tree, "status"))
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "root.pem").write_bytes(CA.root("Schema Root").cert_pem)
    (tree.drop / "junk.pem").write_bytes(b"junk")
    (tree.drop / "leaf.pem").write_bytes(CA.root("Other").issue_server("x", ["x"]).cert_pem)
    assert tree.cli("sync").returncode == 3
    listed = run_json(tree, "list")
    validate("list", listed)
    assert len(listed["trusted"]) == 1
    status = run_json(tree, "status")
    validate("status", status)
    assert status["rejected_files_total"] == 2 and status["last_sync"]["result"] == "ok"


def test_status_validates_with_a_daemon_and_an_expiring_ca(tree: Tree) -> None:
    tree.drop.mkdir(parents=True, exist_ok=True)
    (tree.drop / "soon.pem").write_bytes(
        CA.root("Soon", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=5, hours=1)).cert_pem
    )
    with RunningDaemon(tree) as daemon:
        daemon.wait_ready()
        status = run_json(tree, "status")
    validate("status", status)
    assert status["daemon"]["state"] == "running" and status["expiring"][0]["days_left"] >= 4


def test_verify_validates_when_it_passes_and_when_it_fails(tree: Tree, tmp_path: Path) -> None:
    root = CA.root("Verify Root")
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    with tls_server(tmp_path / "srv", root) as port:
        ok = run_json(
            tree,
            "verify",
            f"127.0.0.1:{port}",
            "--ca",
            str(tmp_path / "root.pem"),
            "--servername",
            "localhost",
        )
    validate("verify", ok)
    assert ok["ok"] and ok["chain"]
    refused = run_json(tree, "verify", f"127.0.0.1:{free_port()}", "--timeout", "2", code=1)
    validate("verify", refused)
    assert not refused["ok"] and refused["diagnosis"]["cause"]


def test_doctor_validates_and_says_why_in_its_checks(tree: Tree) -> None:
    proc = tree.cli("doctor", "--json")
    doc = json.loads(proc.stdout)
    validate("doctor", doc)
    assert proc.returncode == (0 if doc["ok"] else 1)
    assert doc["checks"][0]["name"] == "config"
    assert any(c["name"] == "gateway" and c["status"] == "skip" for c in doc["checks"])


def test_doctor_json_with_a_broken_config_is_still_one_document(tree: Tree) -> None:
    tree.config_path.write_text("watch: {settle_ms: -1}\n")
    proc = tree.cli("doctor", "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    validate("doctor", doc)
    assert not doc["ok"] and doc["checks"][0]["status"] == "fail" and "settle_ms" in doc["checks"][0]["fix"]


def test_a_document_that_breaks_its_schema_is_refused() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate("list", {"schema_version": 1, "trusted": [{"sha256": "not hex"}]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"trusted": []}, schema("list"))  # no schema_version
    undocumented = {"schema_version": 1, "ok": True, "checks": [], "summary": "", "extra": 1}
    jsonschema.validate(
        {**undocumented, "checks": [{"name": "c", "status": "pass", "message": "", "fix": None}]},
        schema("doctor"),
    )
    with pytest.raises(jsonschema.ValidationError):
        validate("doctor", undocumented)  # the strict copy refuses a key the schema omits


def test_the_package_installs_the_schemas() -> None:
    install = (REPO / "packaging/debian/edge-certd.install").read_text()
    assert "edge_certd/schemas/*.json usr/share/edge-certd/schemas/" in install.splitlines()
    assert '"schemas/*.json"' in (REPO / "pyproject.toml").read_text()
