"""Property-based fuzzing of the parser and the validator (hypothesis).

`formats.parse` may only ever raise FormatError; `verdict.judge_file` may raise nothing
at all: every input becomes a verdict. Inputs are random bytes, mutations of real
certificate files in every supported format, PEM and JSON built from random parts, and
certificates built and properly signed with random (and malformed) contents, so the
fuzzing also reaches the code behind a valid signature.

The number of examples is bounded and the examples are derandomised, so CI runs the
same cases every time and within its time budget.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.certs import CA

from edge_certd.core.formats import FormatError, parse
from edge_certd.core.judgement import JudgeContext, JudgeRequest, Rules
from edge_certd.core.model import FileVerdict, SourceKind
from edge_certd.core.verdict import DROP, KEYVAULT, judge_file

# The generators below build odd names on purpose; cryptography warns about each one.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Seeds:
    files: tuple[bytes, ...]
    passwords: tuple[bytes, ...]


def _seeds() -> Seeds:
    root = CA.root("Fuzz Root")
    rsa_root = CA.root("Fuzz RSA Root", key_type="rsa")
    inter = root.intermediate("Fuzz Inter")
    leaf = inter.issue_server("gw", ["gw", "127.0.0.1"])
    der = root.der
    p7 = pkcs7.serialize_certificates([root.cert, inter.cert], serialization.Encoding.DER)
    p7_pem = pkcs7.serialize_certificates([root.cert], serialization.Encoding.PEM)
    pfx_open = pkcs12.serialize_key_and_certificates(
        b"k", leaf.key, leaf.cert, [inter.cert, root.cert], serialization.NoEncryption()
    )
    pfx_pw = pkcs12.serialize_key_and_certificates(
        b"k", None, None, [root.cert], serialization.BestAvailableEncryption(b"s3cret")
    )
    kv_cert = json.dumps(
        {
            "cer": base64.b64encode(der).decode(),
            "x509ThumbprintHex": __import__("hashlib").sha1(der).hexdigest(),
        }
    )
    kv_pem = json.dumps(
        {"contentType": "application/x-pem-file", "value": (leaf.key_pem + leaf.chain_pem(True)).decode()}
    )
    kv_pfx = json.dumps({"contentType": "application/x-pkcs12", "value": base64.b64encode(pfx_open).decode()})
    trusted = (
        b"-----BEGIN TRUSTED CERTIFICATE-----\n"
        + base64.encodebytes(der + _REJECT_SERVER_AUTH)
        + b"-----END TRUSTED CERTIFICATE-----\n"
    )
    key_der = root.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kv_text = json.dumps({"contentType": "text/plain", "value": root.key_pem.decode()})
    files = (
        root.cert_pem,
        der,
        rsa_root.cert_pem,
        rsa_root.der,
        leaf.chain_pem(True),
        p7,
        p7_pem,
        pfx_open,
        pfx_pw,
        base64.b64encode(pfx_open),
        kv_cert.encode(),
        kv_pem.encode(),
        kv_pfx.encode(),
        root.key_pem,
        root.cert_pem + root.key_pem,
        trusted,
        root.cert_pem + key_der,
        kv_text.encode(),
    )
    return Seeds(files, (b"s3cret",))


# OpenSSL's X509_CERT_AUX with one reject entry (serverAuth), as `-addreject` writes it.
_REJECT_SERVER_AUTH = bytes.fromhex("300ca00a06082b06010505070301")


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real file with a few random edits: flips, cuts, insertions, repeats."""
    data = bytearray(draw(st.sampled_from(SEEDS.files)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate", "repeat", "version"]))
        at = draw(st.integers(0, len(data) - 1))
        version = data.find(b"\xa0\x03\x02\x01")  # [0] EXPLICIT INTEGER: the X.509 version
        if op == "version" and 0 <= version < len(data) - 4:
            data[version + 4] = draw(st.integers(0, 255))
        elif op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "truncate":
            del data[at:]
        else:
            end = min(len(data), at + draw(st.integers(1, 128)))
            data[at:at] = data[at:end]
    return bytes(data)


LABELS = [
    "CERTIFICATE",
    "X509 CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "PKCS7",
    "CMS",
    "PKCS #7 SIGNED DATA",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "PUBLIC KEY",
    "X509 CRL",
    "WEIRD",
]


@st.composite
def pem_files(draw: st.DrawFn) -> bytes:
    """PEM text built from random blocks: real or random DER, headers, stray text."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        label = draw(st.sampled_from(LABELS)).encode()
        body = draw(
            st.one_of(
                st.binary(max_size=600), mutated(), st.sampled_from([f for f in SEEDS.files if f[:1] == b"0"])
            )
        )
        text = base64.encodebytes(body)
        if draw(st.booleans()):
            text = draw(st.sampled_from([b"Proc-Type: 4,ENCRYPTED\n\n", b"a:b\n", b""])) + text
        out += draw(st.binary(max_size=20)) + b"-----BEGIN " + label + b"-----\n" + text
        if draw(st.integers(0, 5)):
            out += b"-----END " + label + b"-----\n"
    return out


@st.composite
def json_files(draw: st.DrawFn) -> bytes:
    values = st.one_of(
        st.text(max_size=80),
        st.integers(),
        st.none(),
        st.booleans(),
        st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
        st.sampled_from(SEEDS.files).map(lambda b: base64.b64encode(b).decode()),
        st.lists(st.integers(), max_size=3),
    )
    keys = st.sampled_from(["cer", "x509ThumbprintHex", "value", "contentType", "id", "kid"])
    doc = draw(st.dictionaries(keys, values, max_size=5))
    if draw(st.booleans()):
        doc["contentType"] = draw(
            st.sampled_from(["application/x-pem-file", "application/x-pkcs12", "text/plain"])
        )
    text = json.dumps(doc).encode()
    return text if draw(st.integers(0, 4)) else text[: draw(st.integers(0, len(text)))]


_KEYS = [
    ec.generate_private_key(ec.SECP256R1()),
    ec.generate_private_key(ec.SECP384R1()),
    ec.generate_private_key(ec.SECP256K1()),
    rsa.generate_private_key(public_exponent=65537, key_size=1024),
    rsa.generate_private_key(public_exponent=65537, key_size=2048),
]
_ATTRS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.COUNTRY_NAME,
    NameOID.SERIAL_NUMBER,
    NameOID.EMAIL_ADDRESS,
]
_RAW_EXTENSION_OIDS = [
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    x509.ObjectIdentifier("1.2.3.4.5"),
]


@st.composite
def signed_certificates(draw: st.DrawFn) -> bytes:
    """Certificates with random contents, signed for real, so judging goes past parsing.

    Raw extensions carry random bytes under well-known OIDs (a malformed
    basicConstraints, for one), which cryptography only decodes when asked.
    """
    key = draw(st.sampled_from(_KEYS))
    names = draw(
        st.lists(st.tuples(st.sampled_from(_ATTRS), st.text(min_size=1, max_size=70)), min_size=0, max_size=3)
    )
    subject = x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in names])
    issuer = (
        subject
        if draw(st.integers(0, 4))
        else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    )
    start = NOW + dt.timedelta(days=draw(st.integers(-4000, 100)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(draw(st.integers(1, 2**159 - 1)))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=draw(st.integers(1, 8000))))
    )
    used = set()
    if draw(st.booleans()):
        is_ca = draw(st.booleans())
        depth = draw(st.one_of(st.none(), st.integers(0, 5))) if is_ca else None
        builder = builder.add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=depth), critical=draw(st.booleans())
        )
        used.add(ExtensionOID.BASIC_CONSTRAINTS)
    for oid in draw(st.lists(st.sampled_from(_RAW_EXTENSION_OIDS), max_size=3, unique=True)):
        if oid in used:
            continue
        value = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b"\x30\x03\x01\x01\xff", b"\x30\x00", b"\x30\x06\x01\x01\xff\x02\x01\xff"]),
            )
        )
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=draw(st.booleans()))
    algorithm = draw(st.sampled_from([hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]))
    try:
        cert = builder.sign(key, algorithm)
    except ValueError:
        cert = None  # a combination the builder itself refuses; use a plain root instead
    if cert is None:
        return SEEDS.files[1]
    return cert.public_bytes(serialization.Encoding.DER)


def anything() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2048),
        mutated(),
        pem_files(),
        json_files(),
        signed_certificates(),
        signed_certificates().map(
            lambda d: x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM)
        ),
    )


def _parse_only_format_errors(data: bytes) -> None:
    try:
        parse(data, SEEDS.passwords)
    except FormatError as exc:
        assert exc.code and exc.message


def _request(data: bytes, kind: str) -> JudgeRequest:
    return JudgeRequest(source="fuzz.pem", data=data, kind=SourceKind(kind))


def _context(rules: Rules) -> JudgeContext:
    return JudgeContext(rules=rules, now=NOW, passwords=tuple(SEEDS.passwords))


def _judge_never_raises(data: bytes, kind: str, rules: Rules) -> None:
    verdict = judge_file(
        _request(data, kind), JudgeContext(rules=rules, now=NOW, passwords=tuple(SEEDS.passwords))
    )
    assert isinstance(verdict, FileVerdict)
    for rejection in verdict.rejected:
        assert rejection.code and rejection.message
    for ca in verdict.accepted:
        assert len(ca.sha256) == 64


@FUZZ
@given(st.binary(max_size=4096))
def test_parse_random_bytes_raises_only_format_error(data: bytes) -> None:
    _parse_only_format_errors(data)


@FUZZ
@given(mutated())
def test_parse_mutated_real_files_raises_only_format_error(data: bytes) -> None:
    _parse_only_format_errors(data)


@FUZZ
@given(st.one_of(pem_files(), json_files()))
def test_parse_built_pem_and_json_raises_only_format_error(data: bytes) -> None:
    _parse_only_format_errors(data)


RULES = st.builds(
    Rules,
    allow_intermediate=st.booleans(),
    allow_expired=st.booleans(),
    min_rsa_bits=st.sampled_from([1024, 2048, 4096]),
    allow_sha1_signature=st.booleans(),
)


@FUZZ
@given(anything(), st.sampled_from([DROP, KEYVAULT]), RULES)
def test_judge_file_turns_every_input_into_a_verdict(data: bytes, kind: str, rules: Rules) -> None:
    _judge_never_raises(data, kind, rules)


@FUZZ
@given(signed_certificates(), st.sampled_from([DROP, KEYVAULT]), RULES)
def test_judge_file_survives_signed_certificates_with_odd_contents(
    data: bytes, kind: str, rules: Rules
) -> None:
    _judge_never_raises(data, kind, rules)


# -- each format on its own, mutated, and arbitrary bytes: judge_file is total and every
# failure is one it expected (judge_failed would mean an exception reached the safety net).

FORMAT_SEEDS = {
    "pem": (0, 2, 4, 15),
    "der": (1, 3),
    "pkcs7": (5, 6),
    "pkcs12": (7, 8, 9),
    "keyvault-json": (10, 11, 12, 17),
}
PER_FORMAT = settings(FUZZ, max_examples=200)


@st.composite
def mutated_format(draw: st.DrawFn, name: str) -> bytes:
    data = bytearray(SEEDS.files[draw(st.sampled_from(FORMAT_SEEDS[name]))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "length"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a DER length byte turned into something large or indefinite
            data[at] = draw(st.sampled_from([0x80, 0x81, 0x84, 0xFF, 0x7F]))
        if not data:
            data = bytearray(b"0")
    return bytes(data)


def _total_and_expected(data: bytes, kind: str) -> None:
    _judge_never_raises(data, kind, Rules())
    verdict = judge_file(
        _request(data, kind), JudgeContext(rules=Rules(), now=NOW, passwords=tuple(SEEDS.passwords))
    )
    assert all(r.code != "judge_failed" for r in verdict.rejected), verdict.rejected


@pytest.mark.parametrize("name", sorted(FORMAT_SEEDS))
def test_judge_file_is_total_on_each_mutated_format(name: str) -> None:
    @PER_FORMAT
    @given(mutated_format(name), st.sampled_from([DROP, KEYVAULT]))
    def check(data: bytes, kind: str) -> None:
        _total_and_expected(data, kind)

    check()


@PER_FORMAT
@given(st.binary(max_size=4096), st.sampled_from([DROP, KEYVAULT]))
def test_judge_file_is_total_on_arbitrary_bytes(data: bytes, kind: str) -> None:
    _total_and_expected(data, kind)
