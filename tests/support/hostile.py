"""The hostile input corpus: generated at test time, never downloaded.

    material = make_material(work_dir)           # the slow part: keys, openssl certificates
    for case in corpus(material):
        path = materialise(case, drop_dir)       # a file, FIFO, socket, device, link, ...

Each case says what may come of it: the SHA-256s it may make trusted (usually none) and
the rejection codes that explain it. A case that may be trusted is a real root CA under a
hostile name or shape; every other case must end trusted nowhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from support import derbuild as d
from support.certs import CA
from support.oddcerts import dsa_root, ec_root, openssl_root, pem, self_signed, tampered, v1_root

# The growing file starts just under the 1 MiB default limit and keeps growing.
GROWING_START = 1_000_000
HUNDRED_MB = 100 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One hostile directory entry and what may come of it."""

    name: bytes  # the entry's name; bytes because some names are not UTF-8
    note: str  # what it is, for reports
    kind: str = "file"  # file, big, growing, fifo, socket, chardev, blockdev, symlink, hardlink, dir
    data: bytes = field(default=b"", repr=False)  # content, or a symlink's target
    codes: frozenset[str] = frozenset()  # rejection codes that explain it (any of them)
    trusted: frozenset[str] = frozenset()  # SHA-256s it may make trusted
    daemon_may_skip: bool = False  # still being written: the daemon waits for it

    @property
    def text_name(self) -> str:
        return os.fsdecode(self.name)


@dataclass(frozen=True)
class Material:
    good: CA  # a root CA several cases carry
    other: CA  # a second root, for the weird-name cases
    third: CA
    fourth: CA
    odd: dict[str, bytes]  # openssl-made certificates: sha1, md5, rsa1024, dsa, secp256k1, v1
    thousand: bytes  # 1,000 certificates in one PEM
    outside: Path  # a file outside any source directory, for the hard link


def sha_of(cert_der: bytes) -> str:
    return hashlib.sha256(cert_der).hexdigest()


def make_material(work: Path) -> Material:
    work.mkdir(parents=True, exist_ok=True)
    odd = {
        "sha1": openssl_root(work, "sha1", "rsa:2048", "sha1"),
        "md5": openssl_root(work, "md5", "rsa:2048", "md5"),
        "rsa1024": openssl_root(work, "rsa1024", "rsa:1024"),
        "dsa": dsa_root(work),
        "secp256k1": ec_root(work, "secp256k1"),
        "v1": v1_root(work),
    }
    good = CA.root("Hostile Good Root")
    outside = work / "outside-root.pem"
    outside.write_bytes(good.cert_pem)
    return Material(
        good,
        CA.root("Weird Name Root"),
        CA.root("Dash Root"),
        CA.root("Latin1 Root"),
        odd,
        _thousand_leaves(),
        outside,
    )


def _thousand_leaves() -> bytes:
    """1,000 distinct self-signed CA:FALSE certificates sharing one key: ~560 KB of PEM,
    inside the 1 MiB limit, so each one is read and judged."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    out = []
    for i in range(1000):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bulk leaf {i}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        out.append(pem(cert))
    return b"".join(out)


def _with_version(der: bytes, version: int) -> bytes:
    """The certificate with its version INTEGER set to `version` (0 is v1, 2 is v3)."""
    at = der.index(b"\xa0\x03\x02\x01")
    return der[: at + 4] + bytes([version]) + der[at + 5 :]


def _raw_extension_root(oid: x509.ObjectIdentifier, value: bytes, ca: bool = False) -> bytes:
    """A self-signed root carrying `value` as the raw DER of extension `oid` (critical),
    and with `ca`, a basicConstraints CA:TRUE beside it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Raw Extension Root")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.UnrecognizedExtension(oid, value), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return pem(builder.sign(key, hashes.SHA256()))


def _hardened_cases(m: Material) -> list[tuple[str, str, bytes, str]]:
    """Cases from the judging hardening (issue: exceptions, CPU bombs, OpenSSL's anchor
    rules, keys that slipped through): (name, note, content, the one expected code)."""
    good_pem, good_der = m.good.cert_pem, m.good.der
    key_body = b"".join(m.good.key_pem.splitlines(keepends=True)[1:-1])
    key_der = m.good.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sealed = pkcs12.serialize_key_and_certificates(
        None, None, None, [m.other.cert], serialization.BestAvailableEncryption(b"unknown")
    )
    data_oid = d.oid("1.2.840.113549.1.7.1")
    mac = d.seq(
        d.seq(d.seq(d.oid("1.3.14.3.2.26"), b"\x05\x00"), d.octets(b"\x00" * 20)),
        d.octets(b"macsalt!"),
        d.integer(2**31 - 1),
    )
    pfx_bomb = d.seq(d.integer(3), d.seq(data_oid, d.explicit(0, d.octets(d.seq()))), mac)
    reject = bytes.fromhex("300ca00a06082b06010505070301")  # X509_AUX: reject serverAuth
    fields = d.tbs_fields(m.good.cert)
    fields[4] = d.seq(d.tlv(0x18, b"00000101000000Z"), d.split(fields[4])[1])
    line = b"-----BEGIN A-----\n"
    return [
        (
            "key-no-end.pem",
            "a root, then a key block with no END line",
            good_pem + b"-----BEGIN PRIVATE KEY-----\n" + key_body,
            "private_key",
        ),
        (
            "key-mismatched.pem",
            "a root, then BEGIN PRIVATE KEY ... END RSA PRIVATE KEY",
            good_pem + b"-----BEGIN PRIVATE KEY-----\n" + key_body + b"-----END RSA PRIVATE KEY-----\n",
            "private_key",
        ),
        ("der-key-appended.pem", "a PEM root with a DER key appended", good_pem + key_der, "private_key"),
        ("sealed.pfx", "a PKCS#12 (certificates only) no password opens", sealed, "pkcs12_sealed"),
        ("pfx-iterations.pfx", "a PKCS#12 asking for 2^31-1 MAC iterations", pfx_bomb, "pkcs12_sealed"),
        (
            "kv-text-plain.json",
            "a Key Vault secret, contentType text/plain, holding a key",
            json.dumps({"contentType": "text/plain", "value": m.good.key_pem.decode()}).encode(),
            "private_key",
        ),
        ("deep.json", "JSON nested 50,000 deep", b"[" * 50_000 + b"]" * 50_000, "unparseable"),
        (
            "deep-kv.json",
            "Key Vault-like JSON nested 50,000 deep",
            b'{"cer": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "too_costly",
        ),
        ("begin-bomb.pem", "1 MB of -----BEGIN A----- lines", line * (1_000_000 // len(line)), "unparseable"),
        (
            "p7-data.p7b",
            "a PKCS#7 that is not signed-data",
            d.seq(data_oid, d.explicit(0, d.octets(b"hello"))),
            "unparseable",
        ),
        (
            "year-zero.der",
            "a validly self-signed root with notBefore in year 0000",
            d.resign(m.good.cert, m.good.key, d.seq(*fields)),
            "unparseable",
        ),  # type: ignore[arg-type]
        (
            "critical-ext.pem",
            "a root with a critical extension OpenSSL does not handle",
            _raw_extension_root(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00", ca=True),
            "critical_extension",
        ),
        (
            "trusted-reject.pem",
            "a TRUSTED CERTIFICATE rejected for serverAuth",
            b"-----BEGIN TRUSTED CERTIFICATE-----\n"
            + base64.encodebytes(good_der + reject)
            + b"-----END TRUSTED CERTIFICATE-----\n",
            "trust_settings",
        ),
    ]


def _named(cn: str, ca: bool = True) -> x509.Certificate:
    return self_signed(cn, ca=ca)


def corpus(m: Material) -> list[Case]:
    """Every case (73)."""
    good_pem, good_der, good_sha = m.good.cert_pem, m.good.der, sha_of(m.good.der)
    now = dt.datetime.now(dt.UTC)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = serialization.PrivateFormat.PKCS8
    nul_cert = _named("NUL\x00inside\x00CN")
    long_cert = _named("L" * 10_000)
    pfx = pkcs12.serialize_key_and_certificates(
        b"device",
        m.good.key,
        m.good.cert,
        None,
        serialization.BestAvailableEncryption(b"not-the-configured-password"),
    )
    lines = good_pem.split(b"\n")

    def r(name: str, note: str, data: bytes, *codes: str, kind: str = "file") -> Case:
        return Case(name.encode(), note, kind, data, frozenset(codes))

    def t(name: bytes, note: str, data: bytes, sha: str) -> Case:
        return Case(name, note, "file", data, trusted=frozenset({sha}))

    cases = [
        # -- not a certificate at all -------------------------------------------------
        r("garbage.crt", "printable garbage", b"this is not a certificate, honest\n" * 20, "unparseable"),
        r("random.crt", "random binary", os.urandom(4096), "unparseable"),
        r("empty.pem", "an empty file", b"", "unparseable"),
        r("blank.pem", "only whitespace", b" \n\t\n" * 50, "unparseable"),
        r("truncated.pem", "PEM cut in the middle", good_pem[: len(good_pem) // 2], "unparseable"),
        r("no-end.pem", "BEGIN without END", b"\n".join(lines[:-3]) + b"\n", "unparseable"),
        r(
            "bad-base64.pem",
            "PEM body that is not base64",
            good_pem.replace(lines[3], b"!!!!" + lines[3][4:]),
            "unparseable",
        ),
        r(
            "nul-in-pem.pem",
            "NUL bytes inside the base64",
            good_pem.replace(lines[2], lines[2][:10] + b"\0\0\0" + lines[2][10:]),
            "unparseable",
        ),
        r("der-junk.der", "a DER SEQUENCE of junk", b"\x30\x82\x01\x00" + os.urandom(256), "unparseable"),
        r(
            "der-trailing.der",
            "a DER certificate with trailing junk",
            good_der + b"trailing junk",
            "unparseable",
        ),
        r("der-truncated.der", "a DER certificate cut short", good_der[:-40], "unparseable"),
        r(
            "proc-type.pem",
            "PEM with Proc-Type / DEK-Info headers",
            good_pem.replace(
                b"-----\n",
                b"-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n",
                1,
            ),
            "unparseable",
        ),
        r("json-junk.json", "starts like JSON, is not", b'{"cer": "', "unparseable"),
        r(
            "kv-thumbprint.json",
            "Key Vault JSON whose thumbprint does not match",
            json.dumps({"cer": base64.b64encode(good_der).decode(), "x509ThumbprintHex": "00" * 20}).encode(),
            "thumbprint_mismatch",
        ),
        # -- private keys ---------------------------------------------------------------
        r(
            "rsa.key.pem",
            "RSA private key (PKCS#1)",
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            "private_key",
        ),
        r(
            "ec.key.pem",
            "EC private key (SEC1)",
            ec_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
            "private_key",
        ),
        r(
            "pkcs8.pem",
            "PKCS#8 private key",
            ec_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()),
            "private_key",
        ),
        r(
            "pkcs8.der",
            "PKCS#8 private key, DER",
            ec_key.private_bytes(serialization.Encoding.DER, pkcs8, serialization.NoEncryption()),
            "private_key",
        ),
        r(
            "encrypted.pem",
            "encrypted PKCS#8 private key",
            ec_key.private_bytes(
                serialization.Encoding.PEM, pkcs8, serialization.BestAvailableEncryption(b"pw")
            ),
            "private_key",
        ),
        r("cert-and-key.pem", "a root CA with its private key", good_pem + m.good.key_pem, "private_key"),
        # Its key bag shows without the password, so it is a private key, not a password
        # problem (was pkcs12_password before the judging was hardened).
        r("wrong-password.pfx", "PKCS#12 with a password we do not have", pfx, "private_key"),
        # -- size ---------------------------------------------------------------------------
        Case(b"huge.pem", "100 MB: a root CA followed by 100 MB", "big", good_pem, frozenset({"too_large"})),
        Case(
            b"growing.pem",
            "a file that keeps growing while we read",
            "growing",
            b"-----BEGIN CERTIFICATE-----\n",
            frozenset({"too_large", "unparseable"}),
            daemon_may_skip=True,
        ),
        r("thousand.pem", "1,000 certificates in one PEM (leaves, 560 KB)", m.thousand, "not_ca"),
        # -- not a regular file ---------------------------------------------------------------
        Case(b"fifo.crt", "a FIFO", "fifo", codes=frozenset({"not_regular_file"})),
        Case(b"socket.crt", "a socket", "socket", codes=frozenset({"not_regular_file"})),
        Case(
            b"null.crt",
            "a character device (1,3: /dev/null)",
            "chardev",
            codes=frozenset({"not_regular_file"}),
        ),
        Case(b"loop.crt", "a block device (7,0)", "blockdev", codes=frozenset({"not_regular_file"})),
        Case(b"x.crt", "a directory named x.crt", "dir", codes=frozenset({"not_regular_file"})),
        Case(
            b"shadow.crt",
            "a symlink to /etc/shadow",
            "symlink",
            b"/etc/shadow",
            frozenset({"symlink_outside"}),
        ),
        Case(
            b"outside.pem",
            "a symlink to a real root CA outside the directory",
            "symlink",
            bytes(m.outside),
            frozenset({"symlink_outside"}),
        ),
        Case(
            b"loop-a.crt", "a symlink loop (a → b → a)", "symlink", b"loop-b.crt", frozenset({"symlink_loop"})
        ),
        Case(
            b"loop-b.crt", "the other half of the loop", "symlink", b"loop-a.crt", frozenset({"symlink_loop"})
        ),
        Case(b"self.crt", "a symlink to itself", "symlink", b"self.crt", frozenset({"symlink_loop"})),
        Case(
            b"dangling.crt",
            "a symlink to nothing",
            "symlink",
            b"no-such-file.crt",
            frozenset({"dangling_symlink"}),
        ),
        Case(
            b"hardlink.pem",
            "a hard link to a root CA outside the directory",
            "hardlink",
            bytes(m.outside),
            frozenset({"hard_link"}),
        ),
        # -- hostile names, real roots: trusted once, the name shown escaped ---------------
        t(b"name with spaces.pem", "a name with spaces", m.other.cert_pem, sha_of(m.other.der)),
        t(b"-rf --no-preserve-root.pem", "a name with a leading dash", m.third.cert_pem, sha_of(m.third.der)),
        t(b"latin1-\xe9\xff.pem", "a name that is not UTF-8", m.fourth.cert_pem, sha_of(m.fourth.der)),
        r(
            "new\nline\x1b[31m.pem",
            "a name with a newline and a terminal escape",
            b"garbage\n",
            "unparseable",
        ),
        # -- certificates the policy refuses -------------------------------------------------
        r(
            "leaf.pem",
            "a server certificate",
            m.good.issue_server("gw.example", ["gw.example"]).cert_pem,
            "not_ca",
        ),
        r("ca-false.pem", "self-signed with CA:FALSE", pem(_named("CA False", ca=False)), "not_ca"),
        r("v1.pem", "a v1 certificate without basicConstraints", m.odd["v1"], "not_ca"),
        r("intermediate.pem", "an intermediate CA", m.good.intermediate("Inter").cert_pem, "not_self_signed"),
        r(
            "expired.pem",
            "expired",
            pem(
                self_signed(
                    "Expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
                )
            ),
            "expired",
        ),
        r(
            "future.pem",
            "not yet valid",
            pem(
                self_signed(
                    "Future", not_before=now + dt.timedelta(days=30), not_after=now + dt.timedelta(days=60)
                )
            ),
            "not_yet_valid",
        ),
        r("sha1.pem", "SHA-1 signature", m.odd["sha1"], "weak_signature"),
        r("md5.pem", "MD5 signature", m.odd["md5"], "weak_signature"),
        r("rsa1024.pem", "RSA-1024 key", m.odd["rsa1024"], "weak_key"),
        r("dsa.pem", "DSA key", m.odd["dsa"], "unsupported_key"),
        r("secp256k1.pem", "secp256k1, an unusual curve", m.odd["secp256k1"], "unsupported_key"),
        r(
            "bad-signature.der",
            "a root whose self-signature was altered",
            tampered(m.good.cert),
            "bad_signature",
        ),
        # -- loads, then fails when a field is read (these once crashed the daemon) --------
        r("version-8.der", "X.509 version 8", _with_version(good_der, 7), "unparseable"),
        r(
            "bad-constraints.pem",
            "an empty basicConstraints, properly signed",
            _raw_extension_root(x509.ExtensionOID.BASIC_CONSTRAINTS, b""),
            "unparseable",
        ),
        r(
            "bad-utf8.der",
            "a subject that is not valid UTF-8",
            good_der.replace(b"Hostile Good Root", b"Hostile \x85ood Root", 1),
            "unparseable",
        ),
        # -- odd but valid roots ---------------------------------------------------------------
        t(b"same-1.pem", "the same CA twice, first name", good_pem, good_sha),
        t(b"same-2.der", "the same CA twice, second name (DER)", good_der, good_sha),
        t(
            b"pem-then-junk.pem",
            "a PEM root with junk around it (re-serialised on install)",
            b"Bag Attributes\n  friendlyName: evil\n" + good_pem + b"\0\0junk\n",
            good_sha,
        ),
        Case(
            b"nul-subject.pem",
            "a root whose CN holds NUL bytes",
            "file",
            pem(nul_cert),
            trusted=frozenset({sha_of(nul_cert.public_bytes(serialization.Encoding.DER))}),
        ),
        Case(
            b"long-subject.pem",
            "a root with a 10,000-character CN",
            "file",
            pem(long_cert),
            trusted=frozenset({sha_of(long_cert.public_bytes(serialization.Encoding.DER))}),
        ),
    ]
    cases += [r(name, note, data, code) for name, note, data, code in _hardened_cases(m)]
    assert len({c.name for c in cases}) == len(cases)
    return cases


class Growing:
    """A writer thread that keeps appending to a file until stopped."""

    def __init__(self, path: Path, start: bytes) -> None:
        self.path = path
        self._stop = threading.Event()
        with open(path, "wb") as handle:
            handle.write(start + b"A" * GROWING_START)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as handle:
            while not self._stop.wait(0.01):
                handle.write(b"B" * 8192)
                if handle.tell() > 50 * 1024 * 1024:
                    handle.truncate(GROWING_START)  # bounded: keeps growing, never fills a disk

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def materialise(case: Case, directory: Path) -> Growing | None:
    """Create the case's entry in `directory`; a growing file's writer is returned."""
    path = os.path.join(os.fsencode(directory), case.name)
    if case.kind == "file":
        with open(path, "wb") as handle:
            handle.write(case.data)
    elif case.kind == "big":
        with open(path, "wb") as handle:
            handle.write(case.data)
            handle.truncate(HUNDRED_MB)  # sparse: 100 MB to stat() and read(), little disk
    elif case.kind == "growing":
        return Growing(Path(os.fsdecode(path)), case.data)
    elif case.kind == "fifo":
        os.mkfifo(path)
    elif case.kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o644)
    elif case.kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    elif case.kind == "blockdev":
        os.mknod(path, stat.S_IFBLK | 0o644, os.makedev(7, 0))
    elif case.kind == "dir":
        os.mkdir(path)
    elif case.kind == "symlink":
        os.symlink(case.data, path)
    elif case.kind == "hardlink":
        os.link(case.data, path)
    else:  # pragma: no cover - a typo in the corpus
        raise ValueError(case.kind)
    return None
