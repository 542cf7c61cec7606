"""The check itself: DNS, TCP, one TLS handshake, then the presented chain against each
store on its own, the host name and expiry; each step a probe (`net`, `anchors`) and a pure
judgement (`judge`), with one diagnosis for the whole report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import edge_certd.diagnose.verify.anchors as anchors
from edge_certd.core.text import printable
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
    return _Check(request).network()


def verify_chain(request: VerifyRequest, chain_der: Sequence[bytes]) -> VerifyReport:
    """Check a chain from a file (server certificate first) as if the gateway presented it:
    every store on its own, the host name (when the request names one) and expiry. Offline:
    what an operator runs on a sample of devices before switching a gateway to a new chain.
    """
    return _Check(request, offline=True).presented(list(chain_der))


class _Check:
    """One report's steps and diagnoses, gathered in the order `verify` asks."""

    def __init__(self, request: VerifyRequest, *, offline: bool = False) -> None:
        self.request = request
        self.offline = offline
        self.now = dt.datetime.now(dt.UTC)
        self.steps: list[Step] = []
        self.diagnoses: list[Diagnosis] = []
        self.checked: list[tuple[TrustStore, StoreCheck]] = []
        name = request.expected_name
        self.sni = name if name and not is_ip_literal(name) else None

    def add(self, judged: tuple[Step, list[Diagnosis]]) -> Step:
        step, diagnoses = judged
        self.steps.append(step)
        self.diagnoses.extend(diagnoses)
        return step

    def report(self, chain: tuple[CertInfo, ...] = (), verification: str | None = None) -> VerifyReport:
        def base(step: Step) -> str:
            return step.name.split(":", 1)[0]

        done = {base(s) for s in self.steps}
        for name in STEP_TITLES:
            if name in done or name == "connection_string":
                continue
            if self.offline and name in _NETWORK_STEPS:
                continue  # a chain from a file: nothing was dialled, nothing was skipped
            if self.offline and name == "hostname":
                self.steps.append(Step(name, "pass", "not checked: no name given (--servername NAME)"))
                continue
            self.steps.append(Step(name, "skip", "not run: an earlier step failed"))
        order = list(STEP_TITLES)
        self.steps.sort(key=lambda s: order.index(base(s)))  # stable: the stores keep their order
        return VerifyReport(
            host=self.request.host,
            port=self.request.port,
            protocol=self.request.protocol,
            servername=self.sni,
            steps=tuple(self.steps),
            chain=chain,
            verification=verification,
            stores=tuple(self.checked),
            diagnosis=self.diagnoses[0] if self.diagnoses else None,
            checked_at=self.now,
        )

    def network(self) -> VerifyReport:
        request = self.request
        if request.connection_string is not None:
            self.add(judge_connection_string(request))
        if request.host is None:
            return self.report()
        resolved = probe_dns(request.host, request.port, request.timeout)
        self.add(judge_dns(request, resolved))
        if resolved.error:
            return self.report()
        connected = probe_tcp(resolved, request.timeout)
        self.add(judge_tcp(request, connected))
        if connected.sock is None:
            return self.report()
        with anchors.Reading(request.stores, anchors.find_openssl()) as reading:
            try:
                shake = probe_tls(connected.sock, self.sni, request.timeout, meanwhile=reading)
            finally:
                connected.sock.close()
            if self.add(judge_tls(request, shake)).status == "fail":
                return self.report()
            return self.presented(shake.chain_der, reading)

    def presented(self, chain_der: list[bytes], reading: anchors.Reading | None = None) -> VerifyReport:
        request = self.request
        try:
            chain = tuple(cert_info(der) for der in chain_der)
        except ValueError as exc:
            # OpenSSL took it in the handshake, but it is not a certificate cryptography can
            # read: say so rather than guess at a chain.
            self.steps.append(Step("chain", "fail", "a certificate in the chain cannot be parsed"))
            self.diagnoses.append(
                Diagnosis(
                    "bad-chain",
                    f"the chain holds a certificate that cannot be parsed ({printable(str(exc), 120)})",
                    "reissue the gateway's chain with standard X.509 certificates",
                )
            )
            return self.report()
        self.steps.append(judge_chain(chain))
        expiry_step, expiry_diag = judge_expiry(chain, self.now, request.warn_days)
        # A wrong clock or an expired certificate explains a verification failure better
        # than OpenSSL's first complaint does, so those diagnoses come first.
        self.diagnoses.extend(expiry_diag)
        if chain:
            # The one the spare was started from, when there is a spare.
            openssl = reading.openssl if reading is not None else anchors.find_openssl()
            checks = anchors.check_stores(request.stores, chain_der, openssl, reading=reading)
            self.checked.extend(zip(request.stores, checks, strict=True))
        for store, check in self.checked:
            elsewhere = [other for other, result in self.checked if result.verified and other is not store]
            self.add(judge_store(request, store, check, chain, elsewhere))
        if chain and not self.checked:
            self.steps.append(Step("store", "fail", "no trust store to check the chain against"))
            self.diagnoses.append(
                Diagnosis(
                    "no-trust",
                    "no trust store was given, so the chain cannot be verified",
                    "pass --ca FILE with the gateway's root CA",
                )
            )
        host_step: Step | None = None
        if not (self.offline and request.expected_name is None):
            host_step = self.add(judge_hostname(request, chain))
        self.steps.append(expiry_step)
        verification = verification_line(self.checked, host_step) if chain else None
        return self.report(chain, verification)


_NETWORK_STEPS = ("dns", "tcp", "tls")
