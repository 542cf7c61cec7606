"""A verify report as text for a person and as JSON for a script. Pure."""

from __future__ import annotations

from typing import Any

from edge_certd.core.text import printable
from edge_certd.diagnose.verify.model import VerifyReport, when

# Every line and JSON string goes out escaped. cert_info already escaped what the gateway
# sent; this catches anything else that reached a message (an error text, a host name) and is
# long enough for every honest line.
MAX_LINE = 4000

__all__ = ["render_text", "report_to_json"]


def render_text(report: VerifyReport) -> str:
    """The human-readable report: one line per step (one per trust store), then the
    `Verification:` verdict, the diagnosis and the fix.

    The last line is `Result: OK` or `Result: FAILED`. Warnings (a certificate
    expiring within warn_days) are counted on an OK result, because they do not
    fail the check: the exit code is 0 whenever nothing failed.
    """
    target = f"{report.host}:{report.port}" if report.host else "(no gateway host)"
    if report.host and ":" in report.host:
        target = f"[{report.host}]:{report.port}"
    sni = f", SNI {report.servername}" if report.servername else ""
    lines = [f"Verifying {target} ({report.protocol}{sni})"]
    for step in report.steps:
        lines.append(f"  [{step.status}] {step.heading}: {step.summary}")
        lines.extend(f"         {detail}" for detail in step.details)
    if report.verification:
        lines.append(report.verification)
    if report.diagnosis:
        lines.append(f"Diagnosis: {report.diagnosis.message}")
        lines.append(f"Fix: {report.diagnosis.fix}")
    lines = [printable(line, MAX_LINE) for line in lines]
    lines.append(_result_line(report))  # the one line no input can write
    return "\n".join(lines) + "\n"


def _result_line(report: VerifyReport) -> str:
    if not report.ok:
        return "Result: FAILED"
    count = len(report.warnings)
    if not count:
        return "Result: OK"
    noun = "warning" if count == 1 else "warnings"
    return f"Result: OK, with {count} {noun} (warnings do not fail the check)"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value, MAX_LINE)
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    return value


def report_to_json(report: VerifyReport) -> dict[str, Any]:
    """The same result as a JSON-ready dict. Holds no secrets (the connection string
    appears only in redacted form, in the connection_string step).

    `ok` is true when nothing failed; `warnings` names the steps that only warned; `stores`
    has one entry per trust store checked (its step is `store:<name>`). Every string is
    escaped as in the text report.
    """
    result: dict[str, Any] = _clean(_as_dict(report))
    return result


def _as_dict(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "warnings": [s.name for s in report.warnings],
        "host": report.host,
        "port": report.port,
        "protocol": report.protocol,
        "servername": report.servername,
        "checked_at": when(report.checked_at),
        "steps": [
            {
                "name": s.name,
                "title": s.heading,
                "status": s.status,
                "summary": s.summary,
                "details": list(s.details),
            }
            for s in report.steps
        ],
        "chain": [
            {
                "subject": c.subject,
                "issuer": c.issuer,
                "not_before": when(c.not_before),
                "not_after": when(c.not_after),
                "sha256": c.sha256,
                "san": list(c.san),
                "is_ca": c.is_ca,
            }
            for c in report.chain
        ],
        "verification": report.verification,
        "stores": [
            {
                "name": store.key,
                "title": store.title,
                "path": store.path,
                "directory": store.directory,
                "used_by": store.used_by,
                "certificates": check.anchors,
                "trusted": check.verified,
                "error": check.error_text or check.problem,
                "anchored_at": check.anchor,
            }
            for store, check in report.stores
        ],
        "diagnosis": (
            None
            if report.diagnosis is None
            else {
                "cause": report.diagnosis.cause,
                "message": report.diagnosis.message,
                "fix": report.diagnosis.fix,
            }
        ),
    }
