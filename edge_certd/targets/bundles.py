"""Per-runtime PEM bundles.

- edge-roots.pem: only the CAs edge-certd manages. Runtimes that *add* to their own roots
  read it (NODE_EXTRA_CA_CERTS, the Azure IoT SDKs' `ca` / `server_verification_cert` /
  OPTION_TRUSTED_CERT, mosquitto --cafile, openssl -CAfile).
- ca-bundle.pem: the system bundle after the update. Runtimes that *replace* their roots
  read it (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE).
"""

from __future__ import annotations

import os

from edge_certd.core.pem import der_to_pem, pem_fingerprints
from edge_certd.store.fsutil import ensure_directory, read_bytes, read_bytes_quietly, write_atomic
from edge_certd.targets.base import Change, Holding, Outcome, StoreFile

EDGE_ROOTS = "edge-roots.pem"
CA_BUNDLE = "ca-bundle.pem"


class RuntimeBundles:
    name = "bundles"

    def __init__(self, *, bundle_dir: str, system_bundle: str) -> None:
        self.bundle_dir = bundle_dir
        self.system_bundle = system_bundle

    @property
    def edge_roots(self) -> str:
        return os.path.join(self.bundle_dir, EDGE_ROOTS)

    @property
    def ca_bundle(self) -> str:
        return os.path.join(self.bundle_dir, CA_BUNDLE)

    def holdings(self) -> tuple[Holding, ...]:
        held = frozenset(pem_fingerprints(read_bytes_quietly(self.edge_roots) or b""))
        return (
            Holding(
                name="edge-roots.pem",
                location=self.edge_roots,
                installed=held,
                fix="run `edge-certd sync`; it rewrites edge-roots.pem",
            ),
        )

    def env(self) -> tuple[tuple[str, str], ...]:
        return (
            ("NODE_EXTRA_CA_CERTS", self.edge_roots),
            ("REQUESTS_CA_BUNDLE", self.ca_bundle),
            ("EDGE_CERTD_ROOTS", self.edge_roots),
            ("EDGE_CERTD_CA_BUNDLE", self.ca_bundle),
        )

    def stores(self) -> tuple[StoreFile, ...]:
        return (
            StoreFile(
                key="edge-roots",
                title=EDGE_ROOTS,
                used_by="the Azure IoT SDKs' ca / server_verification_cert / OPTION_TRUSTED_CERT "
                "and mosquitto --cafile",
                path=self.edge_roots,
            ),
            StoreFile(
                key="ca-bundle",
                title=CA_BUNDLE,
                used_by="REQUESTS_CA_BUNDLE, SSL_CERT_FILE and CURL_CA_BUNDLE",
                path=self.ca_bundle,
            ),
        )

    def apply(self, change: Change) -> Outcome:
        """Rewrite each file whose content differs. Raises WriteError."""
        ensure_directory(self.bundle_dir, 0o755)
        changed = []
        roots = b"".join(der_to_pem(ca.der) for ca in sorted(change.managed, key=lambda c: c.sha256))
        if write_atomic(self.edge_roots, roots, 0o644):
            changed.append(EDGE_ROOTS)
        system = read_bytes(self.system_bundle)
        if system is not None and write_atomic(self.ca_bundle, system, 0o644):
            changed.append(CA_BUNDLE)
        return Outcome(changed=bool(changed), detail=", ".join(changed))
