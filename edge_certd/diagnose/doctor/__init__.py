"""`edge-certd doctor`: check the device end to end, one line per check, then the gateway.

The checks run in a fixed order, each as a probe (reads the disk, runs systemctl,
connects to the gateway) followed by a pure judgement in `doctor_judge`:

1. the configuration is valid (it was loaded, or no file exists and defaults apply);
2. each source directory exists with a safe owner and mode;
3. the service is active, when systemd runs;
4. every managed CA is in ca_dir, the system bundle, edge-roots.pem and the Java
   truststore (when one is written);
5. the env file exists and every path in it exists;
6. no managed CA expires within the warning window;
7. the clock is not before the newest managed CA's notBefore;
8. on an IoT Edge device (/etc/aziot/config.toml exists), its trust_bundle_cert names a file
   that holds every managed CA, ideally edge-roots.pem itself (nested edge);
9. the last sync (status.json): no file rejected, no private key in a source, and the CAs
   an operator removed that a source still provides (they stay removed);
10. `verify` against the gateway, exactly as `edge-certd verify` with the same gateway
   arguments (HOST[:PORT], --connection-string, ...) would run it; without any, and none
   configured, doctor says plainly that no gateway was checked.

- `run`: the checklist in order, and the output;
- `probes`: the side effects, each returning frozen facts;
- `judge`: the pure judgements of those facts.

A check that fails makes the exit code 1; a warning does not (the same rule as
`verify`). Doctor only reads, with one exception shared with sync: while it looks
at the trust targets it holds the state lock, so it never sees a sync half done.
"""

from edge_certd.diagnose.doctor.run import doctor_document, run_doctor

__all__ = ["doctor_document", "run_doctor"]
