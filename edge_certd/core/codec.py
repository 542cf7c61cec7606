"""FileVerdict and JudgeContext to and from JSON-safe dicts: for the verdict cache and the judge.

Decoding is strict: a verdict that comes back from the judge is untrusted until it decodes,
and a certificate whose bytes do not hash to its fingerprint is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from edge_certd.core.judgement import JudgeContext, JudgeLimits, Rules
from edge_certd.core.model import FileVerdict, Ignored, Reason, Rejection, TrustedCA
from edge_certd.core.text import iso, parse_iso


def context_to_json(context: JudgeContext) -> dict[str, Any]:
    rules = context.rules
    return {
        "rules": {
            "allow_intermediate": rules.allow_intermediate,
            "allow_expired": rules.allow_expired,
            "min_rsa_bits": rules.min_rsa_bits,
            "allow_sha1_signature": rules.allow_sha1_signature,
        },
        "now": iso(context.now),
        "passwords": [base64.b64encode(p).decode() for p in context.passwords],
        "limits": {"cpu_seconds": context.limits.cpu_seconds, "memory_mb": context.limits.memory_mb},
    }


def context_from_json(item: Any) -> JudgeContext:
    """Raises ValueError for anything that is not exactly what context_to_json makes."""
    try:
        rules, limits = item["rules"], item["limits"]
        return JudgeContext(
            rules=Rules(
                allow_intermediate=_bool(rules["allow_intermediate"]),
                allow_expired=_bool(rules["allow_expired"]),
                min_rsa_bits=_int(rules["min_rsa_bits"]),
                allow_sha1_signature=_bool(rules["allow_sha1_signature"]),
            ),
            now=parse_iso(_text(item["now"])),
            passwords=tuple(base64.b64decode(_text(p), validate=True) for p in item["passwords"]),
            limits=JudgeLimits(cpu_seconds=_int(limits["cpu_seconds"]), memory_mb=_int(limits["memory_mb"])),
        )
    except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"malformed judge context ({type(exc).__name__})") from None


def verdict_to_json(verdict: FileVerdict) -> dict[str, Any]:
    return {
        "format": verdict.format,
        "content_sha256": verdict.content_sha256,
        "accepted": [
            {
                "sha256": ca.sha256,
                "subject": ca.subject,
                "not_before": iso(ca.not_before),
                "not_after": iso(ca.not_after),
                "der": base64.b64encode(ca.der).decode(),
            }
            for ca in verdict.accepted
        ],
        "rejected": [
            {"code": str(r.code), "message": r.message, "subject": r.subject, "sha256": r.sha256}
            for r in verdict.rejected
        ],
        "ignored": [i.what for i in verdict.ignored],
    }


def verdict_from_json(item: Any, source: str) -> FileVerdict:
    """Raises ValueError for anything that is not exactly what verdict_to_json makes."""
    try:
        accepted = []
        for ca in item["accepted"]:
            der = base64.b64decode(ca["der"], validate=True)
            if hashlib.sha256(der).hexdigest() != ca["sha256"]:
                raise ValueError("verdict does not match its certificate")
            accepted.append(
                TrustedCA(
                    sha256=_text(ca["sha256"]),
                    subject=_text(ca["subject"]),
                    not_before=parse_iso(ca["not_before"]),
                    not_after=parse_iso(ca["not_after"]),
                    der=der,
                )
            )
        # Interned: 50,000 junk files share a handful of distinct messages.
        rejected = [
            Rejection(
                source=source,
                code=_reason(r["code"]),
                message=_shared(_text(r["message"])),
                subject=_optional(r["subject"]),
                sha256=_optional(r["sha256"]),
            )
            for r in item["rejected"]
        ]
        ignored = [Ignored(source=source, what=_text(what)) for what in item["ignored"]]
        return FileVerdict(
            source=source,
            format=_shared(_text(item["format"])),
            accepted=tuple(accepted),
            rejected=tuple(rejected),
            ignored=tuple(ignored),
            content_sha256=_text(item["content_sha256"]),
        )
    except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"malformed verdict ({type(exc).__name__})") from None


# One copy of each distinct message: 50,000 junk files share a handful. Bounded, so a
# stream of distinct messages cannot grow it without end.
_SHARED: dict[str, str] = {}


def _shared(text: str) -> str:
    if len(_SHARED) < 4096:
        return _SHARED.setdefault(text, text)
    return _SHARED.get(text, text)


# Reason(code) walks the enum's machinery; a dict is what 50,000 verdicts can afford.
_REASONS: dict[str, Reason] = {str(reason): reason for reason in Reason}


def _reason(code: Any) -> Reason:
    """Raises ValueError for a code this version does not know, as Reason() does."""
    reason = _REASONS.get(code) if isinstance(code, str) else None
    if reason is None:
        raise ValueError("unknown reason code")
    return reason


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 20:
        raise ValueError("expected a positive integer")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _text(value)
