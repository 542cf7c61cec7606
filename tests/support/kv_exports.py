"""Azure Key Vault exports, built at test time in the shapes the real tools write.

A device receives its gateway's CA chain from Key Vault in one of these shapes:

* the KeyVaultForLinux VM extension store (default
  /var/lib/waagent/Microsoft.Azure.KeyVault.Store, mode 0700): one PEM file per
  certificate version, `<Vault>.<Cert>.<version>`, holding the private key, the leaf
  and, from extension v2.0 on, the issuers up to the root; plus a symlink
  `<Vault>.<Cert>` to the newest version. Older versions may stay on disk;
* `az keyvault certificate download -e PEM|DER`: the public certificate only;
* `az keyvault secret download` of a certificate-backed secret. The secret value of an
  `application/x-pkcs12` certificate is a base64 PFX: the default encoding (utf-8)
  writes that base64 text as is, `-e base64` decodes it to a binary PFX. An
  `application/x-pem-file` secret is PEM text with the private key first;
* the JSON of `az keyvault certificate show` (`cer` is base64 DER,
  `x509ThumbprintHex` the upper-case SHA-1) and of `az keyvault secret show`.

Everything here is written from what those tools are known to produce; no Azure SDK
or CLI code is used.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from support.certs import Issued

__all__ = [
    "VAULT",
    "CERT_NAME",
    "PFX",
    "PEM_FILE",
    "new_version",
    "key_der",
    "extension_store_file",
    "write_extension_version",
    "point_symlink",
    "certificate_download",
    "secret_value",
    "secret_download",
    "pfx_with_password",
    "certificate_show_json",
    "secret_show_json",
]

VAULT = "contoso-iot-kv"
CERT_NAME = "edge-gateway"
PFX = "application/x-pkcs12"
PEM_FILE = "application/x-pem-file"


def new_version() -> str:
    """A Key Vault object version: 32 lower-case hex digits."""
    return secrets.token_hex(16)


def key_der(issued: Issued) -> bytes:
    """The leaf's private key as unencrypted PKCS#8 DER, the form Key Vault exports."""
    return issued.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _chain(issued: Issued) -> list[x509.Certificate]:
    """Leaf first, then its issuers up to and including the root."""
    return [issued.cert, *issued.chain]


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_and_chain_pem(issued: Issued) -> bytes:
    # Key Vault's PEM secrets and the VM extension's files both put the PKCS#8 key first.
    return issued.key_pem + _pem(_chain(issued))


# --- the KeyVaultForLinux VM extension store ---------------------------------------


def extension_store_file(issued: Issued, with_chain: bool = True) -> bytes:
    """One version file: key + leaf, and (extension v2.0+) the issuers up to the root."""
    certs = _chain(issued) if with_chain else [issued.cert]
    return issued.key_pem + _pem(certs)


def write_extension_version(
    store: Path, issued: Issued, version: str, vault: str = VAULT, cert_name: str = CERT_NAME
) -> Path:
    """Write `<vault>.<cert>.<version>` the way the extension does (0600, store 0700)."""
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)  # the extension resets its folder to drwx------
    path = store / f"{vault}.{cert_name}.{version}"
    path.write_bytes(extension_store_file(issued))
    path.chmod(0o600)
    return path


def point_symlink(store: Path, target: Path, vault: str = VAULT, cert_name: str = CERT_NAME) -> Path:
    """Make `<vault>.<cert>` point at `target`, replacing any old link in one rename."""
    link = store / f"{vault}.{cert_name}"
    temporary = store / f".{link.name}.new"
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(str(target), temporary)  # absolute, as the extension writes it
    os.replace(temporary, link)
    return link


# --- az keyvault certificate download / secret download --------------------------


def certificate_download(cert: x509.Certificate, encoding: str = "PEM") -> bytes:
    """`az keyvault certificate download -e PEM|DER`: the `cer` bytes, PEM-wrapped or raw."""
    der = cert.public_bytes(serialization.Encoding.DER)
    if encoding == "DER":
        return der
    # az wraps base64.encodebytes output: 76-character lines, not PEM's usual 64.
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


def _pfx(issued: Issued, encryption: serialization.KeySerializationEncryption) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        CERT_NAME.encode(), issued.key, issued.cert, list(issued.chain), encryption
    )


def secret_value(issued: Issued, content_type: str) -> str:
    """The value Key Vault keeps in a certificate's secret.

    application/x-pkcs12: a base64 PFX with an empty password (leaf, key and chain).
    application/x-pem-file: PEM text, private key first, then leaf and chain.
    """
    if content_type == PFX:
        return base64.b64encode(_pfx(issued, serialization.NoEncryption())).decode()
    return _key_and_chain_pem(issued).decode()


def secret_download(issued: Issued, content_type: str, encoding: str = "utf-8") -> bytes:
    """`az keyvault secret download [-e base64]` of a certificate-backed secret.

    The default encoding writes the value text unchanged (so a PFX arrives as one line
    of base64, no newline); `-e base64` base64-decodes the value (a binary PFX).
    """
    value = secret_value(issued, content_type)
    if encoding == "base64":
        return base64.b64decode(value)
    return value.encode(encoding)


def pfx_with_password(issued: Issued, password: bytes) -> bytes:
    """A PFX re-protected by an operator (`openssl pkcs12 -export -passout ...`)."""
    return _pfx(issued, serialization.BestAvailableEncryption(password))


# --- az keyvault certificate show / secret show -----------------------------------


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat()


def _attributes(cert: x509.Certificate) -> dict[str, Any]:
    not_before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=dt.UTC)
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=dt.UTC)
    return {
        "created": _stamp(not_before),
        "enabled": True,
        "expires": _stamp(not_after),
        "notBefore": _stamp(not_before),
        "recoverableDays": 90,
        "recoveryLevel": "Recoverable+Purgeable",
        "updated": _stamp(not_before),
    }


def _dumps(doc: dict[str, Any]) -> bytes:
    # az prints JSON indented by two spaces with sorted keys, then a newline.
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def certificate_show_json(
    cert: x509.Certificate,
    version: str,
    *,
    vault: str = VAULT,
    cert_name: str = CERT_NAME,
    content_type: str = PFX,
    thumbprint_hex: str | None = None,
) -> bytes:
    """`az keyvault certificate show`: `cer` (base64 DER), the SHA-1 thumbprints, the policy."""
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1 = hashlib.sha1(der).digest()
    base = f"https://{vault}.vault.azure.net"
    subject = cert.subject.rfc4514_string()
    attributes = _attributes(cert)
    doc = {
        "attributes": attributes,
        "cer": base64.b64encode(der).decode(),
        "contentType": content_type,
        "id": f"{base}/certificates/{cert_name}/{version}",
        "kid": f"{base}/keys/{cert_name}/{version}",
        "name": cert_name,
        "policy": {
            "attributes": {
                "created": attributes["created"],
                "enabled": True,
                "expires": None,
                "notBefore": None,
                "recoverableDays": None,
                "recoveryLevel": None,
                "updated": attributes["updated"],
            },
            "id": f"{base}/certificates/{cert_name}/policy",
            "issuerParameters": {
                "certificateTransparency": None,
                "certificateType": None,
                "name": "Unknown",
            },  # imported, not issued by Key Vault
            "keyProperties": {
                "curve": None,
                "exportable": True,
                "keySize": 2048,
                "keyType": "RSA",
                "reuseKey": False,
            },
            "lifetimeActions": [
                {
                    "action": {"actionType": "EmailContacts"},
                    "trigger": {"daysBeforeExpiry": None, "lifetimePercentage": 80},
                }
            ],
            "secretProperties": {"contentType": content_type},
            "x509CertificateProperties": {
                "ekus": None,
                "keyUsage": None,
                "subject": subject,
                "subjectAlternativeNames": None,
                "validityInMonths": 12,
            },
        },
        "preserveCertOrder": None,
        "sid": f"{base}/secrets/{cert_name}/{version}",
        "tags": {},
        # x509Thumbprint is base64url without padding, as the REST API's x5t.
        "x509Thumbprint": base64.urlsafe_b64encode(sha1).rstrip(b"=").decode(),
        "x509ThumbprintHex": thumbprint_hex or sha1.hex().upper(),
    }
    return _dumps(doc)


def secret_show_json(
    issued: Issued, content_type: str, version: str, *, vault: str = VAULT, cert_name: str = CERT_NAME
) -> bytes:
    """`az keyvault secret show` of a certificate's secret: `managed` and `kid` are set."""
    base = f"https://{vault}.vault.azure.net"
    doc = {
        "attributes": _attributes(issued.cert),
        "contentType": content_type,
        "id": f"{base}/secrets/{cert_name}/{version}",
        "kid": f"{base}/keys/{cert_name}/{version}",
        "managed": True,
        "name": cert_name,
        "tags": None,
        "value": secret_value(issued, content_type),
    }
    return _dumps(doc)
