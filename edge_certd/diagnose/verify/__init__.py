"""`edge-certd verify`: can this device reach its gateway over TLS, and if not, why?

The check runs as a fixed sequence of steps (connection string, DNS, TCP, TLS
handshake, presented chain, one line per trust store, hostname, expiry). Each step
records pass / fail / warn / skip with its details, and the report carries ONE
diagnosis: the most fundamental failure, with the fix a person should apply.
A warning (a certificate expiring within warn_days) never fails the check.

The trust stores are what the runtimes on the device use, each checked on its own
(`default_stores`): the system store as OpenSSL's default paths see it, edge-roots.pem
alone (what the Azure IoT SDKs' `ca` option trusts), ca-bundle.pem, and the Java
truststore when one is written. Every store must trust the chain: a runtime that
reads a store which lacks the root cannot connect, so its line fails the check.
`--ca FILE` replaces them all with that one file.

The pieces:

- `request`: arguments and configuration turned into a request, and the default stores;
- `check`: the steps run in order (`verify_gateway`);
- `model`: the request, step and report values;
- `net`: the network side effects (DNS, TCP, one TLS handshake that collects the chain);
- `anchors`: reading each store and verifying the chain against it (`openssl verify`);
- `judge`: the pure judgement of what the probes saw;
- `render`: text and JSON output.

Chain verification is OpenSSL's own (`openssl verify`, see `anchors`), so its verdict and
wording are what the device's TLS stacks say. The hostname is checked once, here, so
that a wrong name and an untrusted chain are reported separately instead of the first
hiding the second; the `Verification:` line joins them into one verdict.
"""
