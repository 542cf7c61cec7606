"""OpenSSL's trust settings: the X509_AUX that follows the certificate in a TRUSTED CERTIFICATE
PEM block (`openssl x509 -trustout -addtrust ... -addreject ...`). Pure.

edge-certd installs the plain certificate, so these settings are lost on the way: a root
its owner marked "reject for serverAuth" would come out trusted for everything. Such a
root is refused instead (X509_check_trust() and obj_trust() in OpenSSL's crypto/x509/x509_trust.c
give the meaning: any reject entry that matches wins; a trust list that names neither
serverAuth nor anyExtendedKeyUsage rejects a TLS server).
"""

from __future__ import annotations

from edge_certd.core import der

# X509_CERT_AUX ::= SEQUENCE { trust SEQUENCE OF OID OPTIONAL, reject [0] IMPLICIT
#   SEQUENCE OF OID OPTIONAL, alias UTF8String OPTIONAL, keyid OCTET STRING OPTIONAL,
#   other [1] IMPLICIT SEQUENCE OF AlgorithmIdentifier OPTIONAL }
_REJECT = 0xA0
_SERVER_AUTH = der.oid_bytes("1.3.6.1.5.5.7.3.1")
_ANY_EKU = der.oid_bytes("2.5.29.37.0")
_NAMES = {
    _SERVER_AUTH: "serverAuth",
    _ANY_EKU: "anyExtendedKeyUsage",
    der.oid_bytes("1.3.6.1.5.5.7.3.2"): "clientAuth",
    der.oid_bytes("1.3.6.1.5.5.7.3.4"): "emailProtection",
    der.oid_bytes("1.3.6.1.5.5.7.3.3"): "codeSigning",
}


def refusal(aux: bytes) -> str | None:
    """Why trust settings `aux` forbid installing the certificate as a TLS root, or None."""
    if not aux:
        return None  # a plain TRUSTED CERTIFICATE without settings
    try:
        node, used = der.parse(aux)
    except der.DerError:
        node, used = None, -1
    if node is None or used != len(aux) or node.tag != der.SEQUENCE:
        return "its OpenSSL trust settings cannot be read; install it as a plain CERTIFICATE"
    trust: list[bytes] | None = None
    for child in node.children:
        if child.tag == der.SEQUENCE and trust is None:
            trust = [o.content for o in child.children if o.tag == der.OID]
        elif child.tag == _REJECT:
            rejected = [o.content for o in child.children if o.tag == der.OID]
            if rejected or child.children:
                return (
                    f"its OpenSSL trust settings reject it for {_names(rejected)}, which "
                    "the system store cannot express; it would be trusted for everything"
                )
    if trust is not None and not {_SERVER_AUTH, _ANY_EKU} & set(trust):
        return (
            f"its OpenSSL trust settings allow only {_names(trust) or 'nothing'}, not "
            "serverAuth; it would be trusted for everything once installed"
        )
    return None


def _names(oids: list[bytes]) -> str:
    return ", ".join(_NAMES.get(o, "an unnamed purpose") for o in oids)
