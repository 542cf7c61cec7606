"""The worker's side: run in a child process by `worker.pool`, never imported by the daemon.

It applies its limits first, then reads jobs from stdin and writes verdicts to stdout. It
never opens a file: the bytes to judge come over the pipe.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import pwd
import resource
import stat
import sys
from typing import Any

# Loaded before the limits and the privilege drop: cryptography imports its OpenSSL
# backend lazily, on the first signature check.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401

from edge_certd.core.codec import verdict_to_json
from edge_certd.core.model import SourceKind
from edge_certd.core.policy import Rules
from edge_certd.core.text import parse_iso
from edge_certd.core.verdict import judge_file
from edge_certd.worker.protocol import ProtocolError, encode_json, read_frame, write_frame

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE = 4


def main() -> int:
    limits = json.loads(sys.argv[1])
    _apply_limits(memory_bytes=int(limits["memory_bytes"]))
    _drop_privileges()
    cpu_seconds = int(limits["cpu_seconds"])
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        try:
            header = json.loads(read_frame(stdin))
            datas = [read_frame(stdin) for _ in header["files"]]
        except ProtocolError:
            return 0  # the daemon closed the pipe: it is done with us
        _allow_cpu(cpu_seconds)  # one budget per request, however many files it holds
        write_frame(stdout, encode_json({"verdicts": _judge(header, datas)}))


def _judge(header: dict[str, Any], datas: list[bytes]) -> list[dict[str, Any]]:
    rules = Rules(**header["rules"])
    passwords = [base64.b64decode(p) for p in header["passwords"]]
    now = parse_iso(header["now"])
    return [
        verdict_to_json(
            judge_file(item["source"], data, None, SourceKind(item["kind"]), rules, now, passwords)
        )
        for item, data in zip(header["files"], datas, strict=True)
    ]


def _apply_limits(*, memory_bytes: int) -> None:
    """Address space and file size: a bomb fails with MemoryError or is killed, and the
    worker can write no file even if a parser bug let it try."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of the judged bytes


def _allow_cpu(seconds: int) -> None:
    """A CPU budget for the next job alone: RLIMIT_CPU counts the whole process's time,
    so the soft limit moves with it; past it the kernel sends SIGXCPU, which kills."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY and soft > hard:
        soft = hard
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _drop_privileges() -> None:
    """Become `nobody` when root may; always forbid gaining privileges and being traced.

    Under the shipped unit the seccomp filter (~@privileged) refuses setuid and capset,
    so there the worker keeps the unit's three capabilities; it still reads no file.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.geteuid() != 0 or not all(_others_can_read(p) for p in _code_dirs()):
        return  # e.g. a Python built under /root (0700): as nobody it could not import
    try:
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    except (KeyError, OSError):
        pass  # no such user, or no CAP_SETUID here


def _code_dirs() -> list[str]:
    """Where the child still imports from lazily: the stdlib and cryptography."""
    import cryptography

    return [os.path.dirname(os.__file__), os.path.dirname(cryptography.__file__)]


def _others_can_read(path: str) -> bool:
    """Every directory up to / searchable by others, and `path` itself readable."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        while path != "/":
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
            path = os.path.dirname(path)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
