"""Certificate in, accept or reject with a reason. Pure."""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from edge_certd.core.judgement import Rules
from edge_certd.core.model import Reason, Rejection, TrustedCA
from edge_certd.core.text import printable

# Curves that OpenSSL, Node, Java and mbedTLS on devices all verify.
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")

# The extensions OpenSSL's verifier understands (X509_supported_extension(), in
# crypto/x509/v3_purp.c), as of every release from 1.1.1 to 3.x: a critical extension not
# in this list makes OpenSSL refuse the certificate as part of any chain, the root included
# (X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION). 3.x also knows cRLDistributionPoints and
# 3.0 ocspNoCheck; devices on 1.1.1 do not, so they stay out.
OPENSSL_HANDLED_EXTENSIONS = frozenset(
    {
        x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # nsCertType
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.EXTENDED_KEY_USAGE,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.7"),  # sbgp-ipAddrBlock (RFC 3779)
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.8"),  # sbgp-autonomousSysNum (RFC 3779)
        ExtensionOID.POLICY_CONSTRAINTS,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),  # proxyCertInfo
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's identity: SHA-256 over its DER, in lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def display_subject(cert: x509.Certificate) -> str:
    """The subject as one safe line: control characters escaped, long names cut."""
    try:
        with warnings.catch_warnings():
            # cryptography >= 42 warns about over-long names; the name is cut below anyway.
            warnings.simplefilter("ignore")
            text = cert.subject.rfc4514_string()
    except ValueError:
        text = "<unreadable subject>"
    return printable(text) or "<empty subject>"


def is_self_issued(cert: x509.Certificate) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see judge(): over-long names warn when compared
        return cert.issuer == cert.subject


def is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.ca)


def judge(cert: x509.Certificate, rules: Rules, now: dt.datetime, source: str) -> TrustedCA | Rejection:
    """Decide whether `cert` may become a trusted root.

    Args:
        cert: the certificate.
        rules: the policy.
        now: the current time (UTC, timezone-aware); passed in so tests and clocks agree.
        source: the file it came from, for the rejection message.

    Returns:
        A TrustedCA, or a Rejection whose code is one of: not_ca, not_self_signed,
        critical_extension, no_cert_sign, bad_signature, weak_key, unsupported_key,
        weak_signature, expired, not_yet_valid.
    """
    with warnings.catch_warnings():
        # cryptography >= 42 warns about over-long names when it compares or prints them;
        # a hostile certificate must not spray stderr, and names are cut for display anyway.
        warnings.simplefilter("ignore")
        return _judge(cert, rules, now, source)


def _judge(cert: x509.Certificate, rules: Rules, now: dt.datetime, source: str) -> TrustedCA | Rejection:
    sha = fingerprint(cert)
    subject = display_subject(cert)

    def reject(code: Reason, message: str) -> Rejection:
        return Rejection(source=source, code=code, message=message, subject=subject, sha256=sha)

    if not is_ca(cert):
        if cert.version == x509.Version.v1:
            return reject(
                Reason.NOT_CA, "a version 1 certificate has no basicConstraints, so it cannot be a CA"
            )
        return reject(
            Reason.NOT_CA,
            "not a CA certificate (basicConstraints CA:TRUE is missing); "
            "this looks like a server or device certificate, copy the root CA instead",
        )
    self_issued = is_self_issued(cert)
    if not self_issued and not rules.allow_intermediate:
        issuer = printable(cert.issuer.rfc4514_string())
        return reject(
            Reason.NOT_SELF_SIGNED,
            f"an intermediate CA issued by {issuer}, not a root; copy "
            "the root CA, or set policy.allow_intermediate: true",
        )
    # What OpenSSL 3 refuses in a trust anchor, this refuses too: a root installed but not
    # used would look fine in `edge-certd list` while every TLS connection fails.
    unknown = [
        ext.oid.dotted_string
        for ext in cert.extensions
        if ext.critical and ext.oid not in OPENSSL_HANDLED_EXTENSIONS
    ]
    if unknown:
        return reject(
            Reason.CRITICAL_EXTENSION,
            f"it has a critical extension OpenSSL does not "
            f"handle ({printable(', '.join(unknown), 120)}), so OpenSSL refuses it",
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        return reject(
            Reason.NO_CERT_SIGN,
            "its keyUsage does not include keyCertSign, so it may "
            "not sign certificates and OpenSSL refuses it as a CA",
        )
    # One public_key() per certificate: with OpenSSL 3 each call decodes the key afresh,
    # and that decode is most of what judging a root costs (see bench/b4_restart.py).
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return reject(Reason.UNSUPPORTED_KEY, "its public key type is not supported")
    key_problem = _key_problem(key, rules)
    if key_problem:
        return reject(*key_problem)
    hash_problem = _signature_hash_problem(cert, rules)
    if hash_problem:
        return reject(Reason.WEAK_SIGNATURE, hash_problem)
    if self_issued and not _self_signature_verifies(cert, key):
        return reject(
            Reason.BAD_SIGNATURE,
            "the self-signature does not verify: the certificate was altered or corrupted",
        )
    not_before, not_after = validity(cert)
    if now > not_after and not rules.allow_expired:
        return reject(Reason.EXPIRED, f"expired on {_iso(not_after)}")
    if now < not_before:
        return reject(
            Reason.NOT_YET_VALID,
            f"not valid until {_iso(not_before)}, but the device clock "
            f"reads {_iso(now)}; the clock may be wrong (check NTP / timedatectl)",
        )
    return TrustedCA(
        sha256=sha,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        der=cert.public_bytes(Encoding.DER),
    )


def validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """notBefore and notAfter as aware UTC datetimes on every cryptography version."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return (cert.not_valid_before.replace(tzinfo=dt.UTC), cert.not_valid_after.replace(tzinfo=dt.UTC))


def _key_problem(key: object, rules: Rules) -> tuple[Reason, str] | None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < rules.min_rsa_bits:
            return (
                Reason.WEAK_KEY,
                f"RSA key of {key.key_size} bits is below the minimum of "
                f"{rules.min_rsa_bits} (policy.min_rsa_bits)",
            )
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in SUPPORTED_CURVES:
            return (
                Reason.UNSUPPORTED_KEY,
                f"elliptic curve {key.curve.name} is not supported "
                f"(use one of {', '.join(SUPPORTED_CURVES)})",
            )
        return None
    return (
        Reason.UNSUPPORTED_KEY,
        f"{type(key).__name__.replace('PublicKey', '')} keys are not "
        "supported; use RSA or ECDSA (P-256, P-384, P-521)",
    )


def _signature_hash_problem(cert: x509.Certificate, rules: Rules) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "it is signed with an obsolete or unknown hash algorithm"
    if isinstance(algorithm, hashes.MD5):
        return "it is signed with MD5, which is broken"
    if isinstance(algorithm, hashes.SHA1) and not rules.allow_sha1_signature:
        return "it is signed with SHA-1, which is broken (policy.allow_sha1_signature)"
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s subject is `cert`'s issuer and its key verifies `cert`'s signature.

    Names alone prove nothing (anyone can write a name); the signature check is what ties a
    chain certificate to the root above it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see judge(): over-long names warn when compared
        if cert.issuer != issuer.subject:
            return False
    try:
        key = issuer.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    try:
        return _signature_verifies(cert, issuer, key)
    except (UnsupportedAlgorithm, ValueError, TypeError):
        return False


def chains_to(
    cert: x509.Certificate, roots: Sequence[x509.Certificate], pool: Sequence[x509.Certificate]
) -> bool:
    """True when `cert` reaches one of `roots` through `pool`'s intermediate CAs, every link
    checked by its signature (RFC 5280 section 6.1, without the policy and time checks: this
    only decides whether a file's extra certificates are the chain below its root).

    The caller bounds `pool`: each link may cost a signature check per candidate.
    """
    intermediates = [c for c in pool if is_ca(c) and not is_self_issued(c)]
    current, used = cert, {id(cert)}
    # Each step moves to a certificate not used yet, so the walk ends within len(pool) steps.
    while True:
        if any(issued_by(current, root) for root in roots):
            return True
        parent = next((c for c in intermediates if id(c) not in used and issued_by(current, c)), None)
        if parent is None:
            return False
        used.add(id(parent))
        current = parent


def _self_signature_verifies(cert: x509.Certificate, key: object) -> bool:
    return _signature_verifies(cert, cert, key)


def _signature_verifies(cert: x509.Certificate, issuer: x509.Certificate, key: object) -> bool:
    # Verify by hand for PKCS#1 v1.5 and ECDSA: cryptography >= 40's verify_directly_issued_by
    # refuses SHA-1, which policy.allow_sha1_signature may allow. It handles RSA-PSS, which
    # cryptography 38 (Debian 12) cannot check at all.
    if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
        if not hasattr(cert, "verify_directly_issued_by"):
            return False
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return False
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
