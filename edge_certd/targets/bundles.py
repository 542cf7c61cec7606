"""Per-runtime PEM bundles and the env file that points runtimes at them.

- edge-roots.pem: only the CAs edge-certd manages. Runtimes that *add* to their own roots
  read it (NODE_EXTRA_CA_CERTS, the Azure IoT SDKs' `ca` / `server_verification_cert` /
  OPTION_TRUSTED_CERT, mosquitto --cafile, openssl -CAfile).
- ca-bundle.pem: the system bundle after the update. Runtimes that *replace* their roots
  read it (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from edge_certd.fsutil import ensure_directory, read_bytes, write_atomic
from edge_certd.model import Plan, TrustedCA
from edge_certd.pemutil import der_to_pem, pem_fingerprints
from edge_certd.targets import Outcome

EDGE_ROOTS = "edge-roots.pem"
CA_BUNDLE = "ca-bundle.pem"


class RuntimeBundles:
    name = "bundles"

    def __init__(self, bundle_dir: str, env_file: str, system_bundle: str,
                 java_env: Sequence[tuple[str, str]] = ()) -> None:
        self.bundle_dir = bundle_dir
        self.env_file = env_file
        self.system_bundle = system_bundle
        self.java_env = list(java_env)

    @property
    def edge_roots(self) -> str:
        return os.path.join(self.bundle_dir, EDGE_ROOTS)

    @property
    def ca_bundle(self) -> str:
        return os.path.join(self.bundle_dir, CA_BUNDLE)

    def installed(self) -> frozenset[str]:
        try:
            return frozenset(pem_fingerprints(read_bytes(self.edge_roots) or b""))
        except OSError:
            return frozenset()

    def apply(self, managed: Sequence[TrustedCA], plan: Plan) -> Outcome:
        """Rewrite each file whose content differs. Raises WriteError."""
        ensure_directory(self.bundle_dir, 0o755)
        changed = []
        roots = b"".join(der_to_pem(ca.der) for ca in sorted(managed, key=lambda c: c.sha256))
        if write_atomic(self.edge_roots, roots, 0o644):
            changed.append(EDGE_ROOTS)
        system = read_bytes(self.system_bundle)
        if system is not None and write_atomic(self.ca_bundle, system, 0o644):
            changed.append(CA_BUNDLE)
        ensure_directory(os.path.dirname(self.env_file), 0o755)
        if write_atomic(self.env_file, self.env_text().encode(), 0o644):
            changed.append(os.path.basename(self.env_file))
        return Outcome(bool(changed), ", ".join(changed))

    def env_text(self) -> str:
        """KEY=value lines that both a shell (`. ca.env`) and systemd's EnvironmentFile= read."""
        lines = [
            "# Written by edge-certd; edits are overwritten. Use from a shell with",
            "#   set -a; . " + self.env_file + "; set +a",
            "# or from a unit with EnvironmentFile=" + self.env_file,
            f"NODE_EXTRA_CA_CERTS={self.edge_roots}",
            f"REQUESTS_CA_BUNDLE={self.ca_bundle}",
            f"EDGE_CERTD_ROOTS={self.edge_roots}",
            f"EDGE_CERTD_CA_BUNDLE={self.ca_bundle}",
        ]
        # Quotes only where needed: both sh and systemd strip them, but plain is easier to read.
        lines += [f'{key}="{value}"' if " " in value else f"{key}={value}"
                  for key, value in self.java_env]
        return "\n".join(lines) + "\n"
