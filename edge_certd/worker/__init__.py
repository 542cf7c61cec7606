"""The judge worker: untrusted bytes are parsed and judged in a child process under OS limits
(CPU time, address space, no file writes, no privileges where the system allows dropping
them), the way OpenSSH parses a peer's packets in an unprivileged child. A bomb or a parser
bug costs that child, never the daemon. May import: the core.
"""
