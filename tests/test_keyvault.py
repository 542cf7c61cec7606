"""Key Vault export sources (issue 4): only the CA certificates, never a private key.

Every export is built at test time in the shape the real tool writes (see kv_exports.py)
from a root, an intermediate and a leaf with its key. Each test runs the real CLI in a
subprocess against a device tree whose trust store is rebuilt by the real
update-ca-certificates, and every "works" has a "fails" beside it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support import kv_exports as kv
from support.certs import CA, Issued
from support.tree import Tree

from edge_certd.core.pem import pem_fingerprints

EXIT_OK, EXIT_REJECTED = 0, 3
LEAF_IGNORED = "ignored: leaf certificate CN=mygateway"
KEY_IGNORED = "ignored: private key"
INTERMEDIATE_IGNORED = "ignored: intermediate CA CN=Contoso IoT Intermediate"


@dataclass(frozen=True)
class Chain:
    root: CA
    intermediate: CA
    leaf: Issued  # RSA-2048, the key type Key Vault creates by default


def make_chain(root_name: str = "Contoso IoT Root") -> Chain:
    root = CA.root(root_name)
    intermediate = root.intermediate("Contoso IoT Intermediate")
    return Chain(root, intermediate, intermediate.issue_server("mygateway", ["mygateway"], key_type="rsa"))


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


@dataclass
class Device:
    tree: Tree
    store: Path  # the KeyVaultForLinux extension store
    exports: Path  # where an operator or a pipeline saves `az keyvault ...` output

    def sync(self, expect: int = EXIT_OK) -> subprocess.CompletedProcess[str]:
        proc = self.tree.cli("sync")
        assert proc.returncode == expect, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    def status(self) -> dict[str, Any]:
        proc = self.tree.cli("status", "--json")
        assert proc.returncode == EXIT_OK, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def text(self, *args: str) -> str:
        proc = self.tree.cli(*args)
        assert "Traceback" not in proc.stderr
        return proc.stdout + proc.stderr

    def installed(self) -> set[str]:
        """SHA-256 of every CA in ca_dir; each must also be in the rebuilt system bundle."""
        found: set[str] = set()
        for path in sorted(self.tree.ca_dir.glob("*.crt")):
            found |= pem_fingerprints(path.read_bytes())
        assert found <= pem_fingerprints(self.tree.system_bundle.read_bytes())
        return found


@pytest.fixture
def device(tree: Tree) -> Device:
    store = tree.root / "var/lib/waagent/Microsoft.Azure.KeyVault.Store"
    store.mkdir(parents=True)
    store.chmod(0o700)
    exports = tree.root / "srv/keyvault-exports"
    exports.mkdir(parents=True)
    tree.write_config(keyvault_export_dirs=[str(store), str(exports)])
    return Device(tree, store, exports)


def sha(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- the five formats ---------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One export as a device receives it, and what edge-certd must make of it."""

    place: Callable[[Device, Chain], Path]
    label: str  # the format `inspect` and `status` name
    trusted: tuple[str, ...]  # Chain attributes that must end up trusted
    ignored: tuple[str, ...]  # the `ignored: ...` lines expected


def _extension_store(device: Device, chain: Chain) -> Path:
    version = kv.write_extension_version(device.store, chain.leaf, kv.new_version())
    return kv.point_symlink(device.store, version)


def _export(name: str, make: Callable[[Chain], bytes]) -> Callable[[Device, Chain], Path]:
    def place(device: Device, chain: Chain) -> Path:
        path = device.exports / name
        path.write_bytes(make(chain))
        return path

    return place


FULL_CHAIN = (KEY_IGNORED, LEAF_IGNORED, INTERMEDIATE_IGNORED)
SHAPES = {
    # 1. KeyVaultForLinux v2.0+: key, leaf, intermediate, root; read through the symlink.
    "extension-store": Shape(_extension_store, "PEM", ("root",), FULL_CHAIN),
    # 2. `az keyvault certificate download`: the public certificate of the imported root.
    "certificate-download-pem": Shape(
        _export("contoso-root.pem", lambda c: kv.certificate_download(c.root.cert, "PEM")),
        "PEM",
        ("root",),
        (),
    ),
    "certificate-download-der": Shape(
        _export("contoso-root.cer", lambda c: kv.certificate_download(c.root.cert, "DER")),
        "DER certificate",
        ("root",),
        (),
    ),
    # ... and of the gateway's own certificate: a leaf, so nothing to trust.
    "certificate-download-leaf": Shape(
        _export("edge-gateway.pem", lambda c: kv.certificate_download(c.leaf.cert, "PEM")),
        "PEM",
        (),
        (LEAF_IGNORED,),
    ),
    # 3. `az keyvault secret download` of the certificate's secret.
    "secret-download-pfx": Shape(
        _export("edge-gateway.pfx", lambda c: kv.secret_download(c.leaf, kv.PFX, "base64")),
        "PKCS#12 / PFX",
        ("root",),
        FULL_CHAIN,
    ),
    "secret-download-pfx-base64-text": Shape(
        _export("edge-gateway.pfx.txt", lambda c: kv.secret_download(c.leaf, kv.PFX)),
        "PKCS#12 / PFX as base64 text",
        ("root",),
        FULL_CHAIN,
    ),
    "secret-download-pem": Shape(
        _export("edge-gateway-secret.pem", lambda c: kv.secret_download(c.leaf, kv.PEM_FILE)),
        "PEM",
        ("root",),
        FULL_CHAIN,
    ),
    # 4. `az keyvault certificate show`.
    "certificate-show-json": Shape(
        _export("contoso-root.json", lambda c: kv.certificate_show_json(c.root.cert, kv.new_version())),
        "Key Vault certificate JSON",
        ("root",),
        (),
    ),
    # 5. `az keyvault secret show`, for both content types.
    "secret-show-json-pkcs12": Shape(
        _export(
            "edge-gateway-pfx-secret.json", lambda c: kv.secret_show_json(c.leaf, kv.PFX, kv.new_version())
        ),
        "Key Vault secret JSON",
        ("root",),
        FULL_CHAIN,
    ),
    "secret-show-json-pem": Shape(
        _export(
            "edge-gateway-pem-secret.json",
            lambda c: kv.secret_show_json(c.leaf, kv.PEM_FILE, kv.new_version()),
        ),
        "Key Vault secret JSON",
        ("root",),
        FULL_CHAIN,
    ),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_export_format_installs_exactly_the_allowed_cas(device: Device, chain: Chain, name: str) -> None:
    shape = SHAPES[name]
    path = shape.place(device, chain)

    device.sync()

    assert device.installed() == {sha(getattr(chain, who).cert) for who in shape.trusted}
    status = device.status()
    assert status["rejected"] == [] and status["source_errors"] == []
    assert sorted(i["what"].split(",")[0] for i in status["ignored"]) == sorted(
        line.removeprefix("ignored: ") for line in shape.ignored
    )

    inspected = device.text("inspect", str(path))
    assert f"{path}: {shape.label}" in inspected
    for line in shape.ignored:
        assert line in inspected
    if shape.trusted:
        assert "would trust: CN=Contoso IoT Root" in inspected

    status_text = device.text("status")
    for line in shape.ignored:
        assert f"({shape.label}" in status_text and line in status_text


def test_allow_intermediate_also_trusts_the_intermediate_but_never_leaf_or_key(
    device: Device, chain: Chain
) -> None:
    for shape in SHAPES.values():
        shape.place(device, chain)
    device.tree.write_config(policy__allow_intermediate=True)

    device.sync()

    assert device.installed() == {sha(chain.root.cert), sha(chain.intermediate.cert)}
    ignored = {i["what"].split(",")[0] for i in device.status()["ignored"]}
    assert ignored == {"private key", "leaf certificate CN=mygateway"}


def test_same_export_in_the_drop_directory_is_refused_for_its_private_key(
    device: Device, chain: Chain
) -> None:
    """The contrast: a private key is expected in a Key Vault export, never in drop_dir."""
    device.tree.drop.mkdir(parents=True, exist_ok=True)
    dropped = device.tree.drop / "edge-gateway.pem"
    dropped.write_bytes(kv.secret_download(chain.leaf, kv.PEM_FILE))

    device.sync(expect=EXIT_REJECTED)

    assert device.installed() == set()
    assert [r["code"] for r in device.status()["rejected"]] == ["private_key"]


# --- PFX passwords ------------------------------------------------------------------


def test_pfx_opens_with_a_configured_password_file_and_an_unknown_one_is_rejected(
    device: Device, chain: Chain, tmp_path: Path
) -> None:
    other = make_chain("Fabrikam Root")
    password_file = tmp_path / "pfx-password"
    password_file.write_bytes(b"Correct Horse 42\n")  # `echo` adds a newline; it is not part of it
    password_file.chmod(0o600)
    missing_file = tmp_path / "no-such-password"
    device.tree.write_config(pfx_password_files=[str(missing_file), str(password_file)])
    opens = device.exports / "edge-gateway.pfx"
    opens.write_bytes(kv.pfx_with_password(chain.leaf, b"Correct Horse 42"))
    locked = device.exports / "fabrikam-gateway.pfx"
    locked.write_bytes(kv.pfx_with_password(other.leaf, b"a password nobody configured"))

    proc = device.sync(expect=EXIT_REJECTED)

    assert device.installed() == {sha(chain.root.cert)}
    rejected = device.status()["rejected"]
    assert [(r["source"], r["code"], r["format"]) for r in rejected] == [
        (str(locked), "pkcs12_password", "pkcs12")
    ]
    assert "pfx_password_files" in rejected[0]["message"]
    inspected = device.text("inspect", str(locked))
    assert "(pkcs12_password)" in inspected
    status_text = device.text("status")
    assert f"{locked} (PKCS#12 / PFX): pkcs12_password" in status_text
    for output in (proc.stdout + proc.stderr, inspected, status_text):
        assert "Correct Horse" not in output and "nobody configured" not in output


# --- certificate show: the thumbprint must match --------------------------------------


def test_certificate_json_with_a_wrong_thumbprint_is_rejected(device: Device, chain: Chain) -> None:
    wrong = hashlib.sha1(chain.intermediate.der).hexdigest().upper()
    edited = device.exports / "contoso-root.json"
    edited.write_bytes(kv.certificate_show_json(chain.root.cert, kv.new_version(), thumbprint_hex=wrong))
    good = device.exports / "fabrikam-root.json"
    fabrikam = CA.root("Fabrikam Root")
    good.write_bytes(kv.certificate_show_json(fabrikam.cert, kv.new_version()))

    device.sync(expect=EXIT_REJECTED)

    assert device.installed() == {sha(fabrikam.cert)}
    rejected = device.status()["rejected"]
    assert [(r["source"], r["code"]) for r in rejected] == [(str(edited), "thumbprint_mismatch")]
    assert wrong in rejected[0]["message"]
    assert "thumbprint_mismatch" in device.text("inspect", str(edited))


# --- no private key material, anywhere ----------------------------------------------


class KeyMaterial:
    """Finds any fragment of one private key: raw DER, base64 (any alignment) or hex.

    Only the private integers are searched (for RSA d, p, q, dP, dQ, qInv), so the public
    modulus, which every certificate of that key carries too, never counts as a leak.
    """

    RAW = 16  # bytes
    BASE64 = 16  # characters: 12 bytes, on each of the three possible alignments

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.pem_body = b"".join(pem.splitlines()[1:-1])
        self.raw: set[bytes] = set()
        self.base64: set[bytes] = set()
        self.hex: set[bytes] = set()
        for part in self._private_parts(key):
            assert part in der
            self.raw |= {part[i : i + self.RAW] for i in range(len(part) - self.RAW + 1)}
            self.hex |= {part[i : i + self.RAW].hex().encode() for i in range(len(part) - self.RAW + 1)}
            for shift in range(3):
                chunk = part[shift:]
                encoded = base64.b64encode(chunk[: len(chunk) // 3 * 3])  # whole groups only
                self.base64 |= {
                    encoded[i : i + self.BASE64] for i in range(0, len(encoded) - self.BASE64 + 1, 4)
                }

    @staticmethod
    def _private_parts(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> list[bytes]:
        if isinstance(key, rsa.RSAPrivateKey):
            n = key.private_numbers()
            values = [n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp]
        else:
            values = [key.private_numbers().private_value]
        return [v.to_bytes((v.bit_length() + 7) // 8, "big") for v in values]

    def leaks(self, data: bytes) -> list[str]:
        """What of the key `data` holds; [] when nothing."""
        # PEM line breaks and JSON's escaped "\n" must not hide a base64 run.
        compact = re.sub(rb"\s+|\\[nr]", b"", data)
        found = []
        if self.pem_body in compact:
            found.append("the PEM body")
        if _windows(data, self.RAW) & self.raw:
            found.append("raw DER bytes")
        if _windows(compact, self.BASE64) & self.base64:
            found.append("base64 of the DER")
        if _windows(compact.lower(), 2 * self.RAW) & self.hex:
            found.append("hex of the DER")
        return found


def _windows(data: bytes, size: int) -> set[bytes]:
    return {data[i : i + size] for i in range(len(data) - size + 1)}


def test_the_leak_detector_finds_every_encoding_of_the_key(chain: Chain) -> None:
    """The check below means something only if it catches a leak in each form."""
    material = KeyMaterial(chain.leaf.key)
    der = kv.key_der(chain.leaf)
    for shift in (b"", b"x", b"xy"):
        assert material.leaks(base64.b64encode(shift + der)), shift
        assert material.leaks(b"garbage" + shift + der)
    assert "the PEM body" in material.leaks(chain.leaf.key_pem)
    assert material.leaks(der.hex().upper().encode())
    assert material.leaks(base64.encodebytes(der[-60:-20]))  # a fragment (qInv), wrapped
    assert material.leaks(kv.secret_show_json(chain.leaf, kv.PEM_FILE, kv.new_version()))
    assert material.leaks(kv.secret_download(chain.leaf, kv.PEM_FILE))
    for harmless in (chain.leaf.cert_pem, chain.leaf.der, chain.root.cert_pem):
        assert material.leaks(harmless) == []  # the public key is not a leak


def _files_under(*roots: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
            continue
        for directory, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
            for name in names:
                path = Path(directory, name)
                if path.is_file():
                    yield path


def test_no_private_key_material_is_written_or_shown(device: Device, chain: Chain) -> None:
    sources = [shape.place(device, chain) for shape in SHAPES.values()]
    locked = device.exports / "locked.pfx"
    locked.write_bytes(kv.pfx_with_password(chain.leaf, b"unknown password"))
    device.tree.drop.mkdir(parents=True, exist_ok=True)
    dropped = device.tree.drop / "gateway-with-key.pem"
    dropped.write_bytes(kv.secret_download(chain.leaf, kv.PEM_FILE))
    sources += [locked, dropped]
    material = KeyMaterial(chain.leaf.key)
    carriers = [p.name for p in sources if material.leaks(p.read_bytes())]
    assert len(carriers) >= 6, f"the planted exports must carry the key: {carriers}"

    outputs = {"sync": device.sync(expect=EXIT_REJECTED), "sync again": device.tree.cli("sync")}
    for args in (
        ("status",),
        ("status", "--json"),
        ("list", "--json"),
        ("inspect", *map(str, sources)),
        ("inspect", "--keyvault", str(dropped)),
    ):
        outputs[" ".join(args)] = device.tree.cli(*args)

    assert device.installed() == {sha(chain.root.cert)}  # the check below saw real output
    written = list(
        _files_under(
            device.tree.ca_dir,
            device.tree.bundles,
            device.tree.env_file,
            device.tree.state,
            device.tree.etc_certs,
            skip=(device.tree.drop,),
        )
    )
    assert any(p.name == "status.json" for p in written)
    leaks = {str(p): material.leaks(p.read_bytes()) for p in written}
    leaks |= {
        f"output of `{what}`": material.leaks((proc.stdout + proc.stderr).encode())
        for what, proc in outputs.items()
    }
    assert {where: found for where, found in leaks.items() if found} == {}


# --- KeyVaultForLinux version rotation -----------------------------------------------


def _rotate(device: Device, old: Chain, new: Chain) -> Path:
    """Sync on version 1, then let the extension fetch version 2 and move the link."""
    first = kv.write_extension_version(device.store, old.leaf, kv.new_version())
    kv.point_symlink(device.store, first)
    device.sync()
    assert sha(old.root.cert) in device.installed()
    second = kv.write_extension_version(device.store, new.leaf, kv.new_version())
    kv.point_symlink(device.store, second)
    return first


def test_rotation_trusts_the_new_root_and_drops_the_old_one(device: Device) -> None:
    old, new = make_chain("Contoso IoT Root G1"), make_chain("Contoso IoT Root G2")
    drop_root = CA.root("Fabrikam Field Service Root")
    device.tree.drop.mkdir(parents=True, exist_ok=True)
    (device.tree.drop / "fabrikam.crt").write_bytes(drop_root.cert_pem)

    first = _rotate(device, old, new)
    proc = device.sync()

    assert first.exists(), "the extension keeps old versions; they must not keep old trust"
    assert device.installed() == {sha(new.root.cert), sha(drop_root.cert)}
    assert "removed CN=Contoso IoT Root G1" in proc.stdout
    sources = {
        e["subject"].split(",")[0]: e["sources"]
        for e in json.loads(device.tree.cli("list", "--json").stdout)["trusted"]
    }
    assert sources["CN=Contoso IoT Root G2"] == [str(device.store / f"{kv.VAULT}.{kv.CERT_NAME}")]


def test_rotation_keeps_an_old_root_the_drop_directory_still_provides(device: Device) -> None:
    old, new = make_chain("Contoso IoT Root G1"), make_chain("Contoso IoT Root G2")
    device.tree.drop.mkdir(parents=True, exist_ok=True)
    (device.tree.drop / "contoso-g1.crt").write_bytes(old.root.cert_pem)

    _rotate(device, old, new)
    device.sync()

    assert device.installed() == {sha(old.root.cert), sha(new.root.cert)}
    sources = {
        e["subject"].split(",")[0]: e["sources"]
        for e in json.loads(device.tree.cli("list", "--json").stdout)["trusted"]
    }
    assert sources["CN=Contoso IoT Root G1"] == [str(device.tree.drop / "contoso-g1.crt")]


# --- symlinks out of the export directory --------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative", "into-subdirectory"])
def test_symlink_out_of_the_export_directory_is_refused(device: Device, chain: Chain, how: str) -> None:
    outside = {
        "absolute": device.tree.root / "home/operator",
        "relative": device.tree.root / "var/lib/waagent/elsewhere",
        "into-subdirectory": device.store / "nested",
    }[how]
    outside.mkdir(parents=True)
    target = outside / f"{kv.VAULT}.{kv.CERT_NAME}.{kv.new_version()}"
    target.write_bytes(kv.extension_store_file(chain.leaf))
    link = device.store / f"{kv.VAULT}.{kv.CERT_NAME}"
    link.symlink_to(os.path.relpath(target, device.store) if how == "relative" else target)

    device.sync(expect=EXIT_REJECTED)

    assert device.installed() == set()
    # (`nested` itself is refused too, as "not a regular file"; that is not this test.)
    rejected = [r for r in device.status()["rejected"] if r["source"] == str(link)]
    assert [r["code"] for r in rejected] == ["symlink_outside"]
    assert "outside the source directory" in rejected[0]["message"]
    assert "(symlink_outside)" in device.text("inspect", str(link))


# --- Key Vault directories in sync ---------------------------------------------------


def test_sync_reads_keyvault_dirs_and_a_missing_one_is_not_an_error(device: Device, chain: Chain) -> None:
    not_yet = device.tree.root / "srv/keyvault-later"
    device.tree.write_config(keyvault_export_dirs=[str(device.exports), str(not_yet)])
    (device.exports / "contoso-root.cer").write_bytes(kv.certificate_download(chain.root.cert, "DER"))

    proc = device.sync()

    assert device.installed() == {sha(chain.root.cert)}
    assert device.status()["source_errors"] == []
    assert str(not_yet) not in proc.stdout + proc.stderr

    later = CA.root("Contoso IoT Root G2")
    not_yet.mkdir(mode=0o700)
    (not_yet / "root-g2.pem").write_bytes(kv.certificate_download(later.cert))
    device.sync()
    assert device.installed() == {sha(chain.root.cert), sha(later.cert)}


def test_world_writable_keyvault_dir_is_a_source_error(device: Device, chain: Chain) -> None:
    """The contrast to a missing directory: an unsafe one is reported and not read."""
    (device.exports / "contoso-root.pem").write_bytes(kv.certificate_download(chain.root.cert))
    device.exports.chmod(0o777)

    proc = device.sync(expect=EXIT_REJECTED)  # a refused directory is a rejected input

    assert device.installed() == set()
    assert [e["path"] for e in device.status()["source_errors"]] == [str(device.exports)]
    assert "world-writable" in proc.stdout + proc.stderr
