"""Bytes in, certificates out: PEM, DER, PKCS#7, PKCS#12 and the Azure Key Vault shapes.

Pure: no disk, no subprocess. Private keys are counted, never kept or echoed, so no
key material can reach a log line or an error message from here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InternalError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from edge_certd.core.model import Reason

# Human names for what `detect` found, as `inspect` and `status` print them.
FORMAT_LABELS = {
    "pem": "PEM",
    "der": "DER certificate",
    "pkcs7-pem": "PKCS#7 (PEM)",
    "pkcs7-der": "PKCS#7 (DER)",
    "pkcs12": "PKCS#12 / PFX",
    # `az keyvault secret download` writes a PFX secret's base64 value as text by default;
    # `-e base64` decodes it, which gives the binary "pkcs12" above.
    "pkcs12-base64": "PKCS#12 / PFX as base64 text (az keyvault secret download)",
    "keyvault-certificate-json": "Key Vault certificate JSON (az keyvault certificate show)",
    "keyvault-secret-json": "Key Vault secret JSON (az keyvault secret show)",
    "private-key": "private key",
    "unknown": "unrecognised",
}

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL
)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_PKCS7_LABELS = {b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"}
# OID 1.2.840.113549.1.7.1 (pkcs7-data), which opens every PFX's authSafe.
_PKCS7_DATA_OID = bytes.fromhex("06092a864886f70d010701")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s]+$")
# What cryptography's loaders raise for bad input: InvalidVersion (an X.509 version other
# than 1-3) is not a ValueError, and cryptography 38's OpenSSL-backed PKCS#7 loader raises
# InternalError for some malformed bundles.
_LOAD_ERRORS = (ValueError, x509.InvalidVersion, InternalError)


class FormatError(Exception):
    """The content cannot be read as any supported format.

    Attributes:
        code: a stable reason code (`unparseable`, `pkcs12_password`, `thumbprint_mismatch`).
        message: a sentence for a technician; never contains key material.
    """

    def __init__(self, code: Reason, message: str, fmt: str = "unknown") -> None:
        self.code = code
        self.message = message
        self.format = fmt
        super().__init__(message)


@dataclass(frozen=True)
class Parsed:
    """What a file holds.

    Attributes:
        format: a key of FORMAT_LABELS.
        certificates: every certificate found, in file order.
        private_keys: how many private keys were found (their bytes are dropped).
        problems: parts that could not be read, e.g. a PEM block with bad base64.
    """

    format: str
    certificates: tuple[x509.Certificate, ...]
    private_keys: int = 0
    problems: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return FORMAT_LABELS.get(self.format, self.format)


def parse(data: bytes, passwords: Sequence[bytes] = ()) -> Parsed:
    """Recognise `data` by content and return what it holds.

    Args:
        data: the whole file.
        passwords: PKCS#12 passwords to try after the empty password.

    Raises:
        FormatError: nothing in `data` is a certificate or a key.
    """
    stripped = data.lstrip()
    if not stripped:
        raise FormatError(Reason.UNPARSEABLE, "the file is empty")
    # JSON first: `az keyvault secret show` of a PEM secret carries "-----BEGIN " inside
    # its "value" string (newlines escaped), which the PEM reader would misread as blocks.
    if stripped[:1] == b"{":
        return _parse_json(stripped)
    if b"-----BEGIN " in data:
        return _parse_pem(data)
    if data[:1] == b"\x30":
        return _parse_der(data, passwords)
    if _BASE64_TEXT.match(stripped):
        try:
            decoded = base64.b64decode(b"".join(stripped.split()), validate=True)
        except binascii.Error:
            decoded = b""
        if decoded[:1] == b"\x30":
            inner = _parse_der(decoded, passwords)
            if inner.format == "pkcs12":
                return Parsed("pkcs12-base64", inner.certificates, inner.private_keys)
            return inner
    raise FormatError(
        Reason.UNPARSEABLE,
        "not a certificate file: no PEM, DER, PKCS#7, PKCS#12 or Key Vault JSON content found",
    )


def _parse_pem(data: bytes) -> Parsed:
    certs: list[x509.Certificate] = []
    keys = 0
    problems: list[str] = []
    pkcs7_seen = False
    for index, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label, body = match.group(1), match.group(2)
        if b"PRIVATE KEY" in label:
            keys += 1  # counted only; the block is never decoded or kept
            continue
        if label not in _CERT_LABELS and label not in _PKCS7_LABELS:
            problems.append(f"PEM block {index} ({label.decode(errors='replace')}) is not used")
            continue
        if b":" in body:
            problems.append(f"PEM block {index} has headers (such as Proc-Type) "
                            "a certificate never has")
            continue
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"PEM block {index} is not valid base64")
            continue
        if label in _PKCS7_LABELS:
            pkcs7_seen = True
            try:
                usable, broken = _usable(pkcs7.load_der_pkcs7_certificates(der))
            except _LOAD_ERRORS:
                problems.append(f"PEM block {index} is not a readable PKCS#7 bundle")
                continue
            certs.extend(usable)
            problems.extend(f"PEM block {index}: {why}" for why in broken)
            continue
        if label == b"TRUSTED CERTIFICATE":
            der = der[: _der_length(der) or len(der)]  # drop OpenSSL's trust attributes
        cert, why = _load_der_certificate(der)
        if cert is None:
            problems.append(f"PEM block {index}: {why}")
        else:
            certs.append(cert)
    if not certs and not keys:
        if not problems:
            raise FormatError(Reason.UNPARSEABLE,
                              "the PEM markers are incomplete (the file looks truncated)", "pem")
        raise FormatError(Reason.UNPARSEABLE, "; ".join(problems), "pem")
    fmt = "pkcs7-pem" if pkcs7_seen and len(certs) > 0 else "pem"
    if not certs and keys:
        fmt = "private-key"
    return Parsed(fmt, tuple(certs), keys, tuple(problems))


def _parse_der(data: bytes, passwords: Sequence[bytes]) -> Parsed:
    cert, _ = _load_der_certificate(data)
    if cert is not None:
        return Parsed("der", (cert,))
    try:
        usable, broken = _usable(pkcs7.load_der_pkcs7_certificates(data))
        return Parsed("pkcs7-der", tuple(usable), problems=tuple(broken))
    except _LOAD_ERRORS:
        pass
    if _looks_like_pkcs12(data):
        return _parse_pkcs12(data, passwords)
    if _is_der_private_key(data):
        return Parsed("private-key", (), 1)
    raise FormatError(Reason.UNPARSEABLE, "binary data that is not a DER certificate, PKCS#7 or PKCS#12")


def _parse_pkcs12(data: bytes, passwords: Sequence[bytes]) -> Parsed:
    for password in (None, b"", *passwords):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
        except _LOAD_ERRORS:
            continue
        usable, broken = _usable(([cert] if cert is not None else []) + list(extra))
        return Parsed("pkcs12", tuple(usable), 1 if key is not None else 0, tuple(broken))
    raise FormatError(
        Reason.PKCS12_PASSWORD,
        "a PKCS#12/PFX file that neither the empty password nor any configured password "
        "file (pfx_password_files) opens",
        "pkcs12",
    )


def _parse_json(data: bytes) -> Parsed:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError(Reason.UNPARSEABLE, "starts like JSON but is not valid JSON") from None
    if not isinstance(doc, dict):
        raise FormatError(Reason.UNPARSEABLE, "JSON that is not a Key Vault certificate or secret")
    if "cer" in doc:
        return _parse_keyvault_certificate(doc)
    if "value" in doc and "contentType" in doc:
        return _parse_keyvault_secret(doc)
    raise FormatError(
        Reason.UNPARSEABLE,
        "JSON without the 'cer' field of `az keyvault certificate show` or the "
        "'value'/'contentType' fields of `az keyvault secret show`",
    )


def _parse_keyvault_certificate(doc: dict[str, object]) -> Parsed:
    fmt = "keyvault-certificate-json"
    try:
        der = base64.b64decode(str(doc["cer"]), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(Reason.UNPARSEABLE, "the 'cer' field is not valid base64", fmt) from None
    cert, why = _load_der_certificate(der)
    if cert is None:
        raise FormatError(Reason.UNPARSEABLE, f"the 'cer' field: {why}", fmt)
    claimed = doc.get("x509ThumbprintHex")
    if claimed is not None:
        actual = hashlib.sha1(der).hexdigest()  # Key Vault's thumbprint is SHA-1 by definition
        if str(claimed).lower() != actual:
            raise FormatError(
                Reason.THUMBPRINT_MISMATCH,
                f"x509ThumbprintHex {claimed} does not match the certificate in 'cer' "
                f"(its SHA-1 is {actual.upper()}); the export is corrupt or was edited",
                fmt,
            )
    return Parsed(fmt, (cert,))


def _parse_keyvault_secret(doc: dict[str, object]) -> Parsed:
    fmt = "keyvault-secret-json"
    content_type = str(doc.get("contentType") or "")
    value = str(doc.get("value") or "")
    if content_type == "application/x-pem-file":
        inner = _parse_pem(value.encode())
    elif content_type == "application/x-pkcs12":
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(Reason.UNPARSEABLE, "the secret 'value' is not valid base64",
                              fmt) from None
        # Key Vault stores certificate-backed PFX secrets with an empty password.
        inner = _parse_pkcs12(raw, ())
    else:
        raise FormatError(
            Reason.UNPARSEABLE,
            f"secret contentType {content_type!r} is neither application/x-pem-file "
            "nor application/x-pkcs12",
            fmt,
        )
    return Parsed(fmt, inner.certificates, inner.private_keys, inner.problems)


def _load_der_certificate(der: bytes) -> tuple[x509.Certificate | None, str]:
    length = _der_length(der)
    if length is None:
        return None, "not DER-encoded data"
    if length < len(der):
        return None, f"{len(der) - length} bytes of trailing data after the certificate"
    if length > len(der):
        return None, "the certificate is truncated"
    try:
        cert = x509.load_der_x509_certificate(der)
    except _LOAD_ERRORS:
        return None, "DER data that is not an X.509 certificate"
    why = _undecodable(cert)
    return (None, why) if why else (cert, "")


def _undecodable(cert: x509.Certificate) -> str | None:
    """Why a certificate that loaded still cannot be used, or None.

    cryptography decodes the subject, the issuer and the extensions only when they are
    first read, so a certificate that loads can raise later, deep in the policy: a name
    that is not valid UTF-8, an empty basicConstraints, the same extension twice.
    """
    try:
        with warnings.catch_warnings():
            # Over-long names warn on cryptography >= 42; policy cuts them for display.
            warnings.simplefilter("ignore")
            cert.subject, cert.issuer, cert.extensions  # noqa: B018 - read to decode
    except (ValueError, x509.DuplicateExtension) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"a certificate whose subject, issuer or extensions cannot be decoded ({detail})"
    return None


def _usable(certs: Sequence[x509.Certificate]) -> tuple[list[x509.Certificate], list[str]]:
    """Split certificates into those that decode fully and the reasons for the others."""
    usable, broken = [], []
    for cert in certs:
        why = _undecodable(cert)
        if why:
            broken.append(why)
        else:
            usable.append(cert)
    return usable, broken


def _der_length(der: bytes) -> int | None:
    """Total length of the outer DER SEQUENCE, or None when it is not one."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(der) < 2 + count:
        return None
    return 2 + count + int.from_bytes(der[2 : 2 + count], "big")


def _looks_like_pkcs12(data: bytes) -> bool:
    # PFX ::= SEQUENCE { version INTEGER 3, authSafe ContentInfo (pkcs7-data), ... }
    head = data[:32]
    return b"\x02\x01\x03" in head and _PKCS7_DATA_OID in head


def _is_der_private_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, password=None)
        return True
    except TypeError:
        return True  # encrypted PKCS#8: still a private key
    except Exception:  # noqa: BLE001 - any other failure (unsupported, malformed) means "not a key"
        return False
