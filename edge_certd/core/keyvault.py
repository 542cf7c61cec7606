"""Azure Key Vault's JSON exports: what `az keyvault certificate show` and `az keyvault secret
show` write, unwrapped to the bytes inside. Pure. `formats` parses those bytes as it parses
any file, so a certificate reaches policy the same way whatever wrapped it.

- certificate JSON: `cer` is the certificate's DER in base64; `x509ThumbprintHex` is its
  SHA-1, which Key Vault defines as the thumbprint.
- secret JSON: `value` with `contentType` `application/x-pem-file` (the PEM text) or
  `application/x-pkcs12` (the PFX in base64, with an empty password for certificate-backed
  secrets).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from edge_certd.core import keys, pfx
from edge_certd.core.model import Reason
from edge_certd.core.text import printable
from edge_certd.core.wire import json_nests_deeper

__all__ = ["MAX_JSON_DEPTH", "Export", "KeyVaultError", "read", "thumbprint_mismatch"]

# `az keyvault ... show` nests four levels deep; json.loads recurses once per level.
MAX_JSON_DEPTH = 32

CERTIFICATE_JSON = "keyvault-certificate-json"
SECRET_JSON = "keyvault-secret-json"


@dataclass(frozen=True, kw_only=True)
class Export:
    """What one export holds. `content` says how `data` is to be parsed."""

    format: str  # CERTIFICATE_JSON or SECRET_JSON
    content: Literal["der", "pem", "pkcs12"]
    data: bytes
    thumbprint: str | None = None  # x509ThumbprintHex as claimed, for certificate JSON


class KeyVaultError(Exception):
    """The JSON is not an export this reader can unwrap. `private_keys` counts the keys it
    may still hold, so the file's mode is tightened all the same."""

    def __init__(self, reason: Reason, message: str, fmt: str = "", private_keys: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.format = fmt
        self.private_keys = private_keys


def read(data: bytes) -> Export:
    """Unwrap a Key Vault export.

    Raises:
        KeyVaultError: too deep, not JSON, not an export, or a field that does not decode.
    """
    if json_nests_deeper(data, MAX_JSON_DEPTH):
        raise KeyVaultError(
            Reason.TOO_COSTLY,
            f"JSON nested more than {MAX_JSON_DEPTH} levels deep; a Key Vault export never is",
        )
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise KeyVaultError(Reason.UNPARSEABLE, "starts like JSON but is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyVaultError(Reason.UNPARSEABLE, "JSON that is not a Key Vault certificate or secret")
    if "cer" in doc:
        return _certificate(doc)
    if "value" in doc and "contentType" in doc:
        return _secret(doc)
    raise KeyVaultError(
        Reason.UNPARSEABLE,
        "JSON without the 'cer' field of `az keyvault certificate show` or the "
        "'value'/'contentType' fields of `az keyvault secret show`",
    )


def thumbprint_mismatch(export: Export) -> str | None:
    """Why the claimed thumbprint does not fit the certificate, or None when it does (or
    none is claimed). Checked once the certificate parsed: an unreadable `cer` is reported
    as that, not as a mismatch."""
    if export.thumbprint is None:
        return None
    actual = hashlib.sha1(export.data).hexdigest()  # Key Vault's thumbprint is SHA-1 by definition
    if export.thumbprint.lower() == actual:
        return None
    # Escaped and cut: the value is the file's, and could be 900 KB of anything.
    return (
        f"x509ThumbprintHex {printable(export.thumbprint, 64)} does not match the certificate in "
        f"'cer' (its SHA-1 is {actual.upper()}); the export is corrupt or was edited"
    )


def _certificate(doc: dict[str, object]) -> Export:
    try:
        der = base64.b64decode(str(doc["cer"]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyVaultError(
            Reason.UNPARSEABLE, "the 'cer' field is not valid base64", CERTIFICATE_JSON
        ) from None
    claimed = doc.get("x509ThumbprintHex")
    return Export(
        format=CERTIFICATE_JSON, content="der", data=der, thumbprint=None if claimed is None else str(claimed)
    )


def _secret(doc: dict[str, object]) -> Export:
    content_type = str(doc.get("contentType") or "")
    value = str(doc.get("value") or "")
    raw_value = value.encode("utf-8", errors="replace")
    if content_type == "application/x-pem-file":
        return Export(format=SECRET_JSON, content="pem", data=raw_value)
    if content_type == "application/x-pkcs12":
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise KeyVaultError(
                Reason.UNPARSEABLE, "the secret 'value' is not valid base64", SECRET_JSON
            ) from None
        return Export(format=SECRET_JSON, content="pkcs12", data=raw)
    raise KeyVaultError(
        Reason.UNPARSEABLE,
        f"secret contentType {printable(repr(content_type), 64)} is neither "
        "application/x-pem-file nor application/x-pkcs12",
        SECRET_JSON,
        private_keys=_keys_in_secret(raw_value),
    )


def _keys_in_secret(value: bytes) -> int:
    """Keys in a secret whose contentType says nothing useful (`text/plain`, or none)."""
    found = keys.pem_key_markers(value)
    try:
        decoded = base64.b64decode(b"".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return found
    if keys.is_der_private_key(decoded):
        return found + 1
    if pfx.looks_like_pfx(decoded):
        return found + max(pfx.inspect(decoded).visible_keys, 0)
    return found
