"""Bytes in, certificates out: PEM, DER, PKCS#7, PKCS#12 and what the Azure Key Vault exports
wrap (unwrapped by `keyvault`).

Pure: no disk, no subprocess. Private keys are counted, never kept or echoed, so no
key material can reach a log line or an error message from here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from edge_certd.core import keys, keyvault, pem, pfx, trust_settings
from edge_certd.core.der import declared_length
from edge_certd.core.model import FORMAT_LABELS, Reason
from edge_certd.core.text import printable

_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_PKCS7_LABELS = {b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"}
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\s]+$")
# What cryptography's loaders raise for bad input: InvalidVersion (an X.509 version other
# than 1-3) is not a ValueError, cryptography 38's OpenSSL-backed PKCS#7 loader raises
# InternalError for some malformed bundles, and both raise UnsupportedAlgorithm for a
# PKCS#7 that is not signed-data.
_LOAD_ERRORS = (ValueError, x509.InvalidVersion, InternalError, UnsupportedAlgorithm)
# Past this many unusable parts, one file's report is summarised: a file of 50,000 empty
# blocks must not make a status.json of 50,000 lines.
MAX_PROBLEMS = 20


class FormatError(Exception):
    """The content cannot be read as any supported format.

    Attributes:
        code: a stable reason code (`unparseable`, `pkcs12_password`, `thumbprint_mismatch`,
            `too_costly`).
        message: a sentence for a technician; never contains key material.
        private_keys: private keys seen anyway (a key marker, a visible PKCS#12 key bag).
        sealed: the content could not be looked inside (a PKCS#12 no password opens), so
            it may hold a private key nobody can see.
    """

    def __init__(
        self, code: Reason, message: str, fmt: str = "unknown", *, private_keys: int = 0, sealed: bool = False
    ) -> None:
        self.code = code
        self.message = message
        self.format = fmt
        self.private_keys = private_keys
        self.sealed = sealed
        super().__init__(message)


@dataclass(frozen=True)
class Parsed:
    """What a file holds.

    Attributes:
        format: a key of FORMAT_LABELS.
        certificates: every certificate found, in file order.
        private_keys: how many private keys were found (their bytes are dropped).
        problems: parts that could not be read, e.g. a PEM block with bad base64.
        distrusted: certificates whose own OpenSSL trust settings forbid a TLS root, each
            with the reason.
    """

    format: str
    certificates: tuple[x509.Certificate, ...]
    private_keys: int = 0
    problems: tuple[str, ...] = ()
    distrusted: tuple[tuple[x509.Certificate, str], ...] = ()

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
    # A key marker anywhere counts, whatever else the file is or fails to be: a key block
    # with no END line, under a mismatched label, or inside a JSON string.
    markers = keys.pem_key_markers(data)
    try:
        parsed = _parse_by_content(data, stripped, passwords, markers)
    except FormatError as exc:
        exc.private_keys = max(exc.private_keys, markers)
        raise
    if markers > parsed.private_keys:
        return dataclasses.replace(parsed, private_keys=markers)
    return parsed


def _parse_by_content(data: bytes, stripped: bytes, passwords: Sequence[bytes], markers: int) -> Parsed:
    # JSON first: `az keyvault secret show` of a PEM secret carries "-----BEGIN " inside
    # its "value" string (newlines escaped), which the PEM reader would misread as blocks.
    if stripped[:1] == b"{":
        return _parse_json(stripped)
    if b"-----BEGIN " in data:
        return _parse_pem(data, markers)
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
                return dataclasses.replace(inner, format="pkcs12-base64")
            return inner
    raise FormatError(
        Reason.UNPARSEABLE,
        "not a certificate file: no PEM, DER, PKCS#7, PKCS#12 or Key Vault JSON content found",
    )


def _parse_pem(data: bytes, markers: int = 0) -> Parsed:
    certs: list[x509.Certificate] = []
    distrusted: list[tuple[x509.Certificate, str]] = []
    found = markers
    problems: list[str] = []
    pkcs7_seen = False
    blocks = pem.scan(data)
    for index, block in enumerate(blocks, start=1):
        label, body = block.label, block.body
        name = printable(label.decode("ascii", errors="replace"), 64)
        if b"PRIVATE KEY" in label:
            continue  # counted by its marker; the block is never decoded or kept
        if block.end_label is not None and b"PRIVATE KEY" in block.end_label:
            found += 1  # BEGIN CERTIFICATE ... END PRIVATE KEY: what lies between is a key
            continue
        if not block.complete:
            problems.append(f"PEM block {index} ({name}) has no matching END line")
            continue
        if label not in _CERT_LABELS and label not in _PKCS7_LABELS:
            problems.append(f"PEM block {index} ({name}) is not used")
            continue
        if b":" in body:
            problems.append(f"PEM block {index} has headers (such as Proc-Type) a certificate never has")
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
                problems.append(f"PEM block {index} is not a readable PKCS#7 signed-data bundle")
                continue
            certs.extend(usable)
            problems.extend(f"PEM block {index}: {why}" for why in broken)
            continue
        aux = b""
        if label == b"TRUSTED CERTIFICATE":
            length = declared_length(der) or len(der)
            der, aux = der[:length], der[length:]  # OpenSSL's trust settings follow
        cert, why = _load_der_certificate(der)
        if cert is None:
            problems.append(f"PEM block {index}: {why}")
            continue
        refusal = trust_settings.refusal(aux)
        if refusal:
            distrusted.append((cert, refusal))
        else:
            certs.append(cert)
    # A DER key pasted after a PEM block (`cat root.pem key.der`) is binary between blocks.
    found += keys.der_keys_in(data, list(pem.gaps(data, [b for b in blocks if b.complete])))
    problems = _summarised(problems)
    if not certs and not found and not distrusted:
        if not problems:
            raise FormatError(
                Reason.UNPARSEABLE, "the PEM markers are incomplete (the file looks truncated)", "pem"
            )
        raise FormatError(Reason.UNPARSEABLE, "; ".join(problems), "pem")
    fmt = "pkcs7-pem" if pkcs7_seen and len(certs) > 0 else "pem"
    if not certs and not distrusted and found:
        fmt = "private-key"
    return Parsed(fmt, tuple(certs), found, tuple(problems), tuple(distrusted))


def _summarised(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], f"and {rest} more unusable parts"]


def _parse_der(data: bytes, passwords: Sequence[bytes]) -> Parsed:
    cert, why = _load_der_certificate(data)
    if cert is not None:
        return Parsed("der", (cert,))
    if why.startswith("a certificate whose"):  # it is a certificate, one that cannot be read
        raise FormatError(Reason.UNPARSEABLE, why, "der")
    try:
        usable, broken = _usable(pkcs7.load_der_pkcs7_certificates(data))
        return Parsed("pkcs7-der", tuple(usable), problems=tuple(broken))
    except _LOAD_ERRORS:
        pass
    if pfx.looks_like_pfx(data):
        return _parse_pkcs12(data, passwords)
    if keys.is_der_private_key(data) or _loads_as_private_key(data):
        return Parsed("private-key", (), 1)
    # `cat root.der key.der`: a key after the first element.
    hidden = keys.der_keys_in(data, [(declared_length(data) or 1, len(data))])
    raise FormatError(
        Reason.UNPARSEABLE,
        "binary data that is not a DER certificate, PKCS#7 or PKCS#12",
        private_keys=hidden,
    )


def _parse_pkcs12(data: bytes, passwords: Sequence[bytes]) -> Parsed:
    # The costs are read from the DER first: OpenSSL pays them before it can fail.
    facts = pfx.inspect(data)
    if facts.refusal:
        raise FormatError(
            Reason.TOO_COSTLY if facts.too_costly else Reason.UNPARSEABLE,
            f"a PKCS#12/PFX file that is not opened: {facts.refusal}",
            "pkcs12",
            private_keys=facts.visible_keys,
            sealed=True,
        )
    for password in (None, b"", *passwords):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
        except UnsupportedAlgorithm:
            # The password was right, but a key (SM2, say) or certificate inside has a type
            # cryptography cannot represent: whatever it is, nothing in it can be shown.
            raise FormatError(
                Reason.UNPARSEABLE,
                "a PKCS#12/PFX file holding a key or certificate of a type edge-certd cannot "
                "read (such as SM2); export the root CA certificate on its own",
                "pkcs12",
                private_keys=facts.visible_keys,
                sealed=True,
            ) from None
        except _LOAD_ERRORS:
            continue
        usable, broken = _usable(([cert] if cert is not None else []) + list(extra))
        found = max(1 if key is not None else 0, facts.visible_keys)
        return Parsed("pkcs12", tuple(usable), found, tuple(broken))
    raise FormatError(
        Reason.PKCS12_PASSWORD,
        "a PKCS#12/PFX file that neither the empty password nor any configured password "
        "file (pfx_password_files) opens",
        "pkcs12",
        private_keys=facts.visible_keys,
        sealed=True,
    )


def _parse_json(data: bytes) -> Parsed:
    try:
        export = keyvault.read(data)
    except keyvault.KeyVaultError as exc:
        raise FormatError(exc.reason, str(exc), exc.format, private_keys=exc.private_keys) from None
    if export.content == "pem":
        inner = _parse_pem(export.data, keys.pem_key_markers(export.data))
    elif export.content == "pkcs12":
        inner = _parse_pkcs12(export.data, ())  # Key Vault's certificate-backed PFX: no password
    else:
        cert, why = _load_der_certificate(export.data)
        if cert is None:
            raise FormatError(Reason.UNPARSEABLE, f"the 'cer' field: {why}", export.format)
        mismatch = keyvault.thumbprint_mismatch(export)
        if mismatch:
            raise FormatError(Reason.THUMBPRINT_MISMATCH, mismatch, export.format)
        inner = Parsed(export.format, (cert,))
    return dataclasses.replace(inner, format=export.format)


def _load_der_certificate(der: bytes) -> tuple[x509.Certificate | None, str]:
    length = declared_length(der)
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

    cryptography decodes the subject, the issuer, the extensions and the dates only when
    they are first read, so a certificate that loads can raise later, deep in the policy:
    a name that is not valid UTF-8, an empty basicConstraints, the same extension twice, a
    notBefore in year 0000, or (cryptography 38) a CN encoded as an INTEGER, which raises
    KeyError. Everything is read here, once, and any failure refuses the certificate.
    """
    try:
        with warnings.catch_warnings():
            # Over-long names warn on cryptography >= 42; policy cuts them for display.
            warnings.simplefilter("ignore")
            cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.extensions  # noqa: B018
            if hasattr(cert, "not_valid_after_utc"):
                cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
            else:
                cert.not_valid_before, cert.not_valid_after  # noqa: B018
    except (ValueError, x509.DuplicateExtension) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            "a certificate whose subject, issuer, extensions or dates cannot be decoded "
            f"({printable(text, 160)})"
        )
    except Exception as exc:  # noqa: BLE001 - any other decoder failure means the same
        return (
            "a certificate whose subject, issuer, extensions or dates cannot be decoded "
            f"({type(exc).__name__})"
        )
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


def _loads_as_private_key(data: bytes) -> bool:
    """cryptography's opinion, for key shapes keys.is_der_private_key does not know."""
    try:
        serialization.load_der_private_key(data, password=None)
        return True
    except TypeError:
        return True  # encrypted PKCS#8: still a private key
    except Exception:  # noqa: BLE001 - any other failure (unsupported, malformed) means "not a key"
        return False
