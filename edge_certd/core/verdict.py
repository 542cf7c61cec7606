"""One source file in, one verdict out: what it holds, what is trusted, rejected or ignored. Pure."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from edge_certd.core.formats import FormatError, parse
from edge_certd.core.model import FileVerdict, Ignored, Reason, Rejection, SourceKind, TrustedCA
from edge_certd.core.policy import Rules, display_subject, fingerprint, is_ca, is_self_issued, judge

DROP = SourceKind.DROP
KEYVAULT = SourceKind.KEYVAULT

PRIVATE_KEY_MESSAGE = (
    "the file contains a private key, so the whole file is refused and nothing in it is "
    "trusted. A private key does not belong on this device: delete the file, copy only the "
    "root CA certificate, and treat the key as exposed"
)


def judge_file(source: str, data: bytes | None, problem: tuple[Reason, str] | None,
               kind: SourceKind, rules: Rules, now: dt.datetime,
               passwords: Sequence[bytes] = ()) -> FileVerdict:
    """Judge everything in one file.

    Args:
        source: the path to name in messages.
        data: the bytes read, or None when reading failed with `problem` (code, message).
        kind: DROP or KEYVAULT. In Key Vault exports leaves, intermediates and private keys
            are expected and ignored; in the drop directory a private key refuses the file.
        rules: the policy.
        now: the current time, aware UTC.
        passwords: PKCS#12 passwords to try.
    """
    if data is None:
        code, message = problem or (Reason.UNREADABLE, "cannot be read")
        return FileVerdict(source=source, format="unknown",
                           rejected=(Rejection(source=source, code=code, message=message),))
    content_sha = hashlib.sha256(data).hexdigest()
    try:
        parsed = parse(data, passwords)
    except FormatError as exc:
        rejection = Rejection(source=source, code=exc.code, message=exc.message)
        return FileVerdict(source=source, format=exc.format, rejected=(rejection,),
                           content_sha256=content_sha)
    if parsed.private_keys and kind == DROP:
        rejection = Rejection(source=source, code=Reason.PRIVATE_KEY, message=PRIVATE_KEY_MESSAGE)
        return FileVerdict(source=source, format=parsed.format, rejected=(rejection,),
                           content_sha256=content_sha)

    accepted: list[TrustedCA] = []
    rejected = [Rejection(source=source, code=Reason.UNPARSEABLE, message=text)
                for text in parsed.problems]
    ignored = []
    if parsed.private_keys:
        count = parsed.private_keys
        ignored.append(Ignored(source=source,
                               what="private key" if count == 1 else f"{count} private keys"))
    seen: set[str] = set()
    for cert in parsed.certificates:
        sha = fingerprint(cert)
        if sha in seen:
            continue
        seen.add(sha)
        if kind == KEYVAULT and not is_ca(cert):
            ignored.append(Ignored(source=source, what=f"leaf certificate {display_subject(cert)}"))
            continue
        if kind == KEYVAULT and not is_self_issued(cert) and not rules.allow_intermediate:
            ignored.append(Ignored(source=source, what=f"intermediate CA {display_subject(cert)} "
                                   "(policy.allow_intermediate is false)"))
            continue
        outcome = judge(cert, rules, now, source)
        if isinstance(outcome, TrustedCA):
            accepted.append(outcome)
        else:
            rejected.append(outcome)
    return FileVerdict(source=source, format=parsed.format, accepted=tuple(accepted),
                       rejected=tuple(rejected), ignored=tuple(ignored), content_sha256=content_sha)
