"""Device Update for IoT Hub: `edge-certd package --du-import` writes the apt manifest and an
import manifest v5 that Device Update's published JSON schema accepts (a copy of it, with its
source and licence, in tests/data/deviceupdate/); a version Device Update cannot hold exactly
is refused before anything is built.

The CLI runs for real (dpkg-deb builds the .deb); nothing is imported into Azure.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support.certs import CA
from support.tree import Tree, require_tool

from edge_certd.core.errors import UsageError
from edge_certd.core.model import TrustedCA
from edge_certd.package import RootsPackage
from edge_certd.package import deviceupdate as du

NAME = "contoso-gateway-roots"
DATA = Path(__file__).resolve().parent / "data" / "deviceupdate"
IMPORT_SCHEMA = DATA / "azure-deviceupdate-import-manifest-5.0.json"
DEFINITIONS = DATA / "azure-deviceupdate-manifest-definitions-5.0.json"
TARGET = ("--du-provider", "Contoso", "--du-manufacturer", "Contoso Ltd", "--du-model", "Gateway Client 2")
EPOCH = 1764892800  # 2025-12-05T00:00:00Z


def import_validator() -> jsonschema.Draft7Validator:
    """A draft-07 validator for the import manifest that resolves its `$ref`s into the
    definitions file locally, never over the network: through `referencing` (jsonschema 4.18
    and later), or RefResolver (Debian 12's jsonschema 4.10)."""
    main, definitions = json.loads(IMPORT_SCHEMA.read_text()), json.loads(DEFINITIONS.read_text())
    checker = jsonschema.FormatChecker()
    try:
        from referencing import Registry
        from referencing.jsonschema import DRAFT7
    except ImportError:
        resolver = jsonschema.RefResolver.from_schema(main, store={definitions["$id"]: definitions})
        return jsonschema.Draft7Validator(main, resolver=resolver, format_checker=checker)
    registry: Registry[Any] = Registry().with_resources(
        [(doc["$id"], DRAFT7.create_resource(doc)) for doc in (main, definitions)]
    )
    return jsonschema.Draft7Validator(main, registry=registry, format_checker=checker)


def validate_import_manifest(manifest: dict[str, Any]) -> None:
    import_validator().validate(manifest)
    # The schema's top level does not say additionalProperties: false, but the documentation
    # does ("No other properties are allowed").
    assert set(manifest) <= set(json.loads(IMPORT_SCHEMA.read_text())["properties"])


def _package(tree: Tree, tmp_path: Path, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
    require_tool("dpkg-deb")
    pem = tmp_path / "root.pem"
    if not pem.exists():
        pem.write_bytes(CA.root("Gateway Root B").cert_pem)
    return tree.cli(
        "package",
        str(pem),
        "--name",
        NAME,
        "--version",
        version,
        "--output",
        str(tmp_path / "out"),
        *extra,
        env={"SOURCE_DATE_EPOCH": str(EPOCH)},
    )


def test_du_import_writes_an_import_manifest_that_device_updates_schema_accepts(
    tree: Tree, tmp_path: Path
) -> None:
    r = _package(tree, tmp_path, "3.0", "--du-import", *TARGET)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    apt_file, import_file = out / f"{NAME}_3.0.apt-manifest.json", out / f"{NAME}_3.0.importmanifest.json"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{NAME}_3.0_all.deb", apt_file.name, import_file.name]
    )
    assert str(apt_file) in r.stdout and str(import_file) in r.stdout

    manifest = json.loads(import_file.read_text())
    validate_import_manifest(manifest)
    assert manifest["manifestVersion"] == "5.0"
    assert manifest["updateId"] == {"provider": "Contoso", "name": NAME, "version": "3.0"}
    assert manifest["compatibility"] == [{"manufacturer": "Contoso Ltd", "model": "Gateway Client 2"}]
    assert manifest["createdDateTime"] == "2025-12-05T00:00:00Z"
    assert manifest["instructions"]["steps"] == [
        {
            "type": "inline",
            "handler": "microsoft/apt:1",
            "files": [apt_file.name],
            # Microsoft's documented installedCriteria for the apt handler: <name>-<version>
            # of the apt manifest.
            "handlerProperties": {"installedCriteria": f"{NAME}-3.0"},
        }
    ]
    apt_bytes = apt_file.read_bytes()
    assert manifest["files"] == [
        {
            "filename": apt_file.name,
            "sizeInBytes": len(apt_bytes),
            "hashes": {"sha256": base64.b64encode(hashlib.sha256(apt_bytes).digest()).decode()},
        }
    ]
    # No schema is published for the apt manifest: its documented fields, the version exact.
    assert json.loads(apt_bytes) == {
        "name": NAME,
        "version": "3.0",
        "packages": [{"name": NAME, "version": "3.0"}],
    }


def test_the_schema_refuses_what_device_update_would_refuse() -> None:
    """The validator is not a rubber stamp: each rule below lives in the definitions file,
    reached through a `$ref`, so a broken resolution would fail here."""
    now = dt.datetime.fromtimestamp(EPOCH, dt.UTC)
    root = TrustedCA(sha256="b" * 64, subject="CN=Root B", not_before=now, not_after=now, der=b"")
    package = RootsPackage(name=NAME, version="3.0", roots=(root,))
    target = du.DeviceUpdateTarget(provider="Contoso", manufacturer="Contoso", model="Gateway")
    good = du.import_manifest(package, target, b"{}\n", now)
    validate_import_manifest(good)
    breakages = [
        ("updateId", "version", "3"),
        ("updateId", "provider", "Contoso Ltd"),
        (None, "manifestVersion", "4.0"),
        (None, "compatibility", []),
    ]
    for parent, key, value in breakages:
        bad = copy.deepcopy(good)
        (bad[parent] if parent else bad)[key] = value
        with pytest.raises(jsonschema.ValidationError):
            import_validator().validate(bad)
    bad = copy.deepcopy(good)
    del bad["files"][0]["hashes"]["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        import_validator().validate(bad)


REFUSED_VERSIONS = [
    ("3", "one part only. build it as 3.0 (dpkg orders 3.0 after 3)"),
    ("1:3.0-2", "an epoch"),
    ("3.0-2", "a Debian revision"),
    ("3.0~rc1", "more than digits and dots"),
    ("3.0+gw", "more than digits and dots"),
    ("1.2.3.4.5", "it has 5 parts"),
    ("01.2", "leading zero"),
    ("3.01", "leading zero"),
    ("2147483648.0", "above 2147483647"),
    ("9" * 5000 + ".0", "above 2147483647"),  # beyond int()'s default digit limit: no traceback
]


@pytest.mark.parametrize(("version", "why"), REFUSED_VERSIONS, ids=[v[:12] for v, _ in REFUSED_VERSIONS])
def test_a_version_device_update_cannot_hold_exactly_is_refused_and_nothing_is_built(
    tree: Tree, tmp_path: Path, version: str, why: str
) -> None:
    r = _package(tree, tmp_path, version, "--du-import", *TARGET)
    assert r.returncode == 2, r.stderr
    assert f"--version '{version[:60]}" in r.stderr and "can't be used with Device Update" in r.stderr
    assert "2 to 4" in r.stderr and why in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr) < 1000  # the value is cut in the message
    out = tmp_path / "out"
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("version", ["3.0", "2026.12.1", "1.2.3.4", "0.0", "2147483647.0"])
def test_versions_of_two_to_four_numbers_are_the_update_version_as_they_are(version: str) -> None:
    assert du.update_version(RootsPackage(name=NAME, version=version, roots=())) == version


def test_a_package_name_device_update_cannot_hold_is_refused() -> None:
    with pytest.raises(UsageError, match="updateId.name"):
        du.update_version(RootsPackage(name="roots+gw", version="3.0", roots=()))


def test_du_import_says_which_of_provider_manufacturer_and_model_is_missing(
    tree: Tree, tmp_path: Path
) -> None:
    r = _package(tree, tmp_path, "3.0", "--du-import", "--du-provider", "Contoso")
    assert r.returncode == 2
    assert "--du-import needs --du-manufacturer, --du-model" in r.stderr
    assert not (tmp_path / "out").exists()
    r = _package(tree, tmp_path, "3.0", *TARGET)
    assert r.returncode == 2 and "go with --du-import or --du-manifest" in r.stderr


@pytest.mark.parametrize(
    ("provider", "manufacturer", "model"),
    [
        ("Contoso Ltd", "Contoso", "Gateway"),  # a space: not in updateId.provider's pattern
        ("C" * 65, "Contoso", "Gateway"),
        ("Contoso", "Contoso\nInc", "Gateway"),  # a control character
        ("Contoso", "Contoso", "\x1b[2J" * 100),  # a terminal escape, and too long
        ("Contoso", "Contoso", "G" * 65),
        ("Contoso", " Contoso", "Gateway"),
        ("Contoso", "Contoso", ""),
    ],
)
def test_values_device_update_would_refuse_at_import_are_refused(
    provider: str, manufacturer: str, model: str
) -> None:
    with pytest.raises(UsageError, match="can't be") as refused:
        du.check_target(provider, manufacturer, model)
    message = str(refused.value)
    assert message.isprintable() and len(message) < 400  # escaped and cut: one clean line


def test_du_manifest_on_stdout_still_prints_the_apt_manifest_alone_beside_du_import(
    tree: Tree, tmp_path: Path
) -> None:
    r = _package(tree, tmp_path, "3.0", "--du-manifest", "--du-import", *TARGET)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)  # stdout is the manifest alone; the paths went to stderr
    assert printed == json.loads((tmp_path / "out" / f"{NAME}_3.0.apt-manifest.json").read_text())
    assert "importmanifest.json" in r.stderr


def test_du_manifest_with_the_import_options_writes_the_import_manifest_too(
    tree: Tree, tmp_path: Path
) -> None:
    r = _package(tree, tmp_path, "3.0", "--du-manifest", *TARGET)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert json.loads(r.stdout) == json.loads((out / f"{NAME}_3.0.apt-manifest.json").read_text())
    imported = json.loads((out / f"{NAME}_3.0.importmanifest.json").read_text())
    assert imported["manifestVersion"] == "5.0" and imported["updateId"]["version"] == "3.0"
    # The same version rule as --du-import: a version Device Update can't hold builds nothing.
    (tmp_path / "other").mkdir()
    refused = _package(tree, tmp_path / "other", "3", "--du-manifest", *TARGET)
    assert refused.returncode == 2 and not (tmp_path / "other" / "out").exists(), refused.stderr


def test_the_same_inputs_and_source_date_epoch_give_the_same_manifests(tree: Tree, tmp_path: Path) -> None:
    first = _package(tree, tmp_path, "3.0", "--du-import", *TARGET)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = _package(tree, tmp_path, "3.0", "--du-import", *TARGET)
    assert second.returncode == 0, second.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
