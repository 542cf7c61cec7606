"""The judge: untrusted bytes are parsed and judged by `server` (edge-certd-judge.service, or a
child process that drops to `nobody`), one forked child per request under hard OS limits
(CPU time, address space, no file writes), the way OpenSSH parses a peer's packets in an
unprivileged child. A bomb or a parser bug costs that child, never the daemon; `pool` is the
daemon's and the CLI's side. May import: the core.
"""
