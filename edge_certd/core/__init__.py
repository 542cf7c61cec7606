"""The pure core: bytes in, certificates, verdicts and plans out.

Nothing here touches the disk, a subprocess, a socket or systemd, so every function can be
fuzzed and tested without a system. May import: the standard library, cryptography, and
other core modules (enforced by tests/test_architecture.py).
"""
