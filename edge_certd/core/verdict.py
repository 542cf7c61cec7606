"""One source file in, one verdict out: what it holds, what is trusted, rejected or ignored. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography import x509

from edge_certd.core.formats import FormatError, parse
from edge_certd.core.judgement import JudgeContext, JudgeRequest
from edge_certd.core.model import FileVerdict, Ignored, Reason, Rejection, SourceKind, TrustedCA
from edge_certd.core.policy import (
    chains_to,
    display_subject,
    fingerprint,
    is_ca,
    is_self_issued,
    judge,
)

DROP = SourceKind.DROP
KEYVAULT = SourceKind.KEYVAULT

# A full-chain file (Azure's certGen.sh writes server or Edge CA certificate, intermediates and
# root in one PEM) holds a handful of certificates. Chains are only looked for in files up to
# this size: each link costs a signature check per candidate, and a hostile file may hold many.
MAX_CHAIN_FILE = 16
CHAIN_NOTE = "the gateway's chain in this file is ignored; only its root is trusted"
_CHAIN_CODES = frozenset({Reason.NOT_CA, Reason.NOT_SELF_SIGNED})

PRIVATE_KEY_MESSAGE = (
    "the file contains a private key, so the whole file is refused and nothing in it is "
    "trusted. A private key does not belong on this device: delete the file, copy only the "
    "root CA certificate, and treat the key as exposed"
)
SEALED_MESSAGE = (
    "a PKCS#12/PFX file edge-certd cannot look inside ({why}), so it may hold a private key: "
    "the whole file is refused and made readable by root only. Copy only the root CA "
    "certificate, or add the PFX password to pfx_password_files"
)


def judge_file(
    request: JudgeRequest, context: JudgeContext, *, raise_memory_error: bool = False
) -> FileVerdict:
    """Judge everything in one file.

    In Key Vault exports leaves, intermediates and private keys are expected and ignored; in
    the drop directory a private key refuses the file.

    Never raises, except MemoryError when `raise_memory_error` (the judge's child, whose only
    MemoryError is its own address-space limit: a limit the file exceeded, not a bug). An
    unexpected failure while judging (a decoder bug, RecursionError) refuses this file alone,
    with the code `judge_failed`.
    """
    source, data = request.source, request.data
    try:
        return _judge_file(request, context)
    except MemoryError:
        if raise_memory_error:
            raise
        return _failed(source, data, "MemoryError")
    except Exception as exc:  # noqa: BLE001 - the contract: every input becomes a verdict
        return _failed(source, data, type(exc).__name__)
    except BaseException as exc:
        # pyo3's PanicException (a Rust panic inside cryptography) derives from
        # BaseException; an interrupt or an exit does not belong to judging.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return _failed(source, data, type(exc).__name__)


def _failed(source: str, data: bytes, kind_of_error: str) -> FileVerdict:
    # The exception's type only: its text could quote the file's bytes, a key among them.
    message = f"edge-certd could not judge this file (internal error {kind_of_error}); it is not trusted"
    try:
        content_sha = hashlib.sha256(data).hexdigest()
    except Exception:  # noqa: BLE001 - MemoryError again, most likely
        content_sha = ""
    return FileVerdict(
        source=source,
        format="unknown",
        content_sha256=content_sha,
        rejected=(Rejection(source=source, code=Reason.JUDGE_FAILED, message=message),),
    )


def _judge_file(request: JudgeRequest, context: JudgeContext) -> FileVerdict:
    source, data, kind, rules, now = request.source, request.data, request.kind, context.rules, context.now
    content_sha = hashlib.sha256(data).hexdigest()
    try:
        parsed = parse(data, context.passwords)
    except FormatError as exc:
        code, message = exc.code, exc.message
        if kind == DROP and exc.private_keys:
            code, message = Reason.PRIVATE_KEY, PRIVATE_KEY_MESSAGE
        elif kind == DROP and exc.sealed:
            code, message = Reason.PKCS12_SEALED, SEALED_MESSAGE.format(why=_why(exc))
        rejection = Rejection(source=source, code=code, message=message)
        return FileVerdict(
            source=source, format=exc.format, rejected=(rejection,), content_sha256=content_sha
        )
    if parsed.private_keys and kind == DROP:
        rejection = Rejection(source=source, code=Reason.PRIVATE_KEY, message=PRIVATE_KEY_MESSAGE)
        return FileVerdict(
            source=source, format=parsed.format, rejected=(rejection,), content_sha256=content_sha
        )

    accepted: list[TrustedCA] = []
    rejected = [Rejection(source=source, code=Reason.UNPARSEABLE, message=text) for text in parsed.problems]
    ignored = []
    if parsed.private_keys:
        count = parsed.private_keys
        ignored.append(Ignored(source=source, what="private key" if count == 1 else f"{count} private keys"))
    seen: set[str] = set()
    for cert, why in parsed.distrusted:
        sha = fingerprint(cert)
        seen.add(sha)
        rejected.append(
            Rejection(
                source=source,
                code=Reason.TRUST_SETTINGS,
                message=why,
                subject=display_subject(cert),
                sha256=sha,
            )
        )
    for cert in parsed.certificates:
        sha = fingerprint(cert)
        if sha in seen:
            continue
        seen.add(sha)
        if kind == KEYVAULT and not is_ca(cert):
            ignored.append(Ignored(source=source, what=f"leaf certificate {display_subject(cert)}"))
            continue
        if kind == KEYVAULT and not is_self_issued(cert) and not rules.allow_intermediate:
            ignored.append(
                Ignored(
                    source=source,
                    what=f"intermediate CA {display_subject(cert)} (policy.allow_intermediate is false)",
                )
            )
            continue
        outcome = judge(cert, rules, now, source)
        if isinstance(outcome, TrustedCA):
            accepted.append(outcome)
        else:
            rejected.append(outcome)
    if kind == DROP and accepted and rejected:
        rejected, chain = _split_chain(parsed.certificates, accepted, rejected)
        if chain:
            ignored.append(Ignored(source=source, what=f"{CHAIN_NOTE} ({_names(chain)})"))
    return FileVerdict(
        source=source,
        format=parsed.format,
        accepted=tuple(accepted),
        rejected=tuple(rejected),
        ignored=tuple(ignored),
        content_sha256=content_sha,
    )


def _split_chain(
    certificates: Sequence[x509.Certificate], accepted: Sequence[TrustedCA], rejected: list[Rejection]
) -> tuple[list[Rejection], list[Rejection]]:
    """Split off the rejections that are the chain below a root this file has trusted.

    A leaf or an intermediate that reaches an accepted root of this file, each link checked
    by its signature, is the gateway's own chain, copied with its root: a note, not a
    rejection. Anything else (an unrelated leaf, a chain to a root not here) stays rejected.
    """
    if len(certificates) > MAX_CHAIN_FILE:
        return rejected, []
    by_sha = {fingerprint(c): c for c in certificates}
    roots = [
        by_sha[ca.sha256] for ca in accepted if ca.sha256 in by_sha and is_self_issued(by_sha[ca.sha256])
    ]
    keep: list[Rejection] = []
    chain: list[Rejection] = []
    for rejection in rejected:
        cert = by_sha.get(rejection.sha256 or "")
        if rejection.code in _CHAIN_CODES and cert is not None and chains_to(cert, roots, certificates):
            chain.append(rejection)
        else:
            keep.append(rejection)
    return keep, chain


def _names(chain: Sequence[Rejection], limit: int = 3) -> str:
    names = [r.subject or "<no subject>" for r in chain]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _why(exc: FormatError) -> str:
    if exc.code is Reason.PKCS12_PASSWORD:
        return "no configured password opens it"
    return exc.message.removeprefix("a PKCS#12/PFX file that is not opened: ")
