"""The check itself: DNS, TCP, one TLS handshake, then the presented chain against each
store on its own, the host name and expiry; each step a probe (`net`, `anchors`) and a pure
judgement (`judge`), with one diagnosis for the whole report.
"""

from __future__ import annotations

import datetime as dt

import edge_certd.diagnose.verify.anchors as anchors
from edge_certd.diagnose.verify.judge import (
    judge_chain,
    judge_connection_string,
    judge_dns,
    judge_expiry,
    judge_hostname,
    judge_store,
    judge_tcp,
    judge_tls,
    verification_line,
)
from edge_certd.diagnose.verify.model import (
    STEP_TITLES,
    CertInfo,
    Diagnosis,
    Step,
    StoreCheck,
    TrustStore,
    VerifyReport,
    VerifyRequest,
    cert_info,
    is_ip_literal,
)
from edge_certd.diagnose.verify.net import probe_dns, probe_tcp, probe_tls


def verify_gateway(request: VerifyRequest) -> VerifyReport:
    """Check that the gateway in `request` is reachable and trusted over TLS.

    Never raises for a network or certificate problem: those become failed steps
    and a diagnosis in the report.
    """
    now = dt.datetime.now(dt.UTC)
    steps: list[Step] = []
    diagnoses: list[Diagnosis] = []
    sni = request.expected_name if not is_ip_literal(request.expected_name or "") else None

    checked: list[tuple[TrustStore, StoreCheck]] = []

    def base(step: Step) -> str:
        return step.name.split(":", 1)[0]

    def report(chain: tuple[CertInfo, ...] = (), verification: str | None = None) -> VerifyReport:
        done = {base(s) for s in steps}
        for name in STEP_TITLES:
            if name not in done and name != "connection_string":
                steps.append(Step(name, "skip", "not run: an earlier step failed"))
        order = list(STEP_TITLES)
        steps.sort(key=lambda s: order.index(base(s)))  # stable: the stores keep their order
        return VerifyReport(
            host=request.host,
            port=request.port,
            protocol=request.protocol,
            servername=sni,
            steps=tuple(steps),
            chain=chain,
            verification=verification,
            stores=tuple(checked),
            diagnosis=diagnoses[0] if diagnoses else None,
            checked_at=now,
        )

    if request.connection_string is not None:
        step, diag = judge_connection_string(request)
        steps.append(step)
        diagnoses.extend(diag)
    if request.host is None:
        return report()

    resolved = probe_dns(request.host, request.port, request.timeout)
    step, diag = judge_dns(request, resolved)
    steps.append(step)
    diagnoses.extend(diag)
    if resolved.error:
        return report()

    connected = probe_tcp(resolved, request.timeout)
    step, diag = judge_tcp(request, connected)
    steps.append(step)
    diagnoses.extend(diag)
    if connected.sock is None:
        return report()

    try:
        shake = probe_tls(connected.sock, sni, request.timeout)
    finally:
        connected.sock.close()

    step, diag = judge_tls(request, shake)
    steps.append(step)
    diagnoses.extend(diag)
    if step.status == "fail":
        return report()

    chain = tuple(cert_info(der) for der in shake.chain_der)
    steps.append(judge_chain(chain))
    expiry_step, expiry_diag = judge_expiry(chain, now, request.warn_days)
    # A wrong clock or an expired certificate explains a verification failure better
    # than OpenSSL's first complaint does, so those diagnoses come first.
    diagnoses.extend(expiry_diag)
    if chain:
        openssl = anchors.find_openssl()
        checked.extend(
            (store, anchors.check_store(store, shake.chain_der, openssl)) for store in request.stores
        )
    for store, check in checked:
        elsewhere = [other for other, result in checked if result.verified and other is not store]
        store_step, store_diag = judge_store(request, store, check, chain, elsewhere)
        steps.append(store_step)
        diagnoses.extend(store_diag)
    if chain and not checked:
        steps.append(Step("store", "fail", "no trust store to check the chain against"))
        diagnoses.append(
            Diagnosis(
                "no-trust",
                "no trust store was given, so the chain cannot be verified",
                "pass --ca FILE with the gateway's root CA",
            )
        )
    host_step, host_diag = judge_hostname(request, chain)
    steps.append(host_step)
    diagnoses.extend(host_diag)
    steps.append(expiry_step)
    verification = verification_line(checked, host_step) if chain else None
    return report(chain, verification)
