"""What the tests share besides fixtures (those stay in the conftest files).

- `tree`: a device-like temporary trust tree driven by the real update-ca-certificates
  (`Tree`, `make_tree`, `require_tool`).
- `certs`: CAs and leaves made at run time; `oddcerts`, `derbuild`: certificates that
  `cryptography` will not build; `hostile`: the hostile-input corpus; `kv_exports`: Key Vault
  export files.
- `daemonrun`: `edge-certd run` under a real NOTIFY_SOCKET, with waits for events.
- `invariants`: what a tree must look like after a sync or mid-crash.
- `loopback`, `tlsserver`: TLS servers on 127.0.0.1.
- `nspawn`: booted Debian 12 and 13 containers for tests/e2e (also a script that builds their
  cached roots); `e2e`: what the e2e modules share on top of it (the cached root, waits).
"""
