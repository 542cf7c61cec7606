"""The judge: serves judge requests, one forked child per request, never imported by the daemon.

Under systemd it is `edge-certd-judge.service`, socket-activated (a dynamic user, no
capabilities, its own seccomp filter, no network, nothing writable) and it exits after
IDLE_SECONDS without a request. Outside systemd the daemon or the CLI starts it over a
socketpair and it drops what the OS lets it drop before it reads a byte.

Each request is judged in a child forked from this process (everything is imported already,
so a fork is cheap) under hard limits taken from the request itself. The parent reaps the
child with wait4, so it knows the child's own CPU time and how it ended, and answers:
`ok` (the verdicts), `limit` (proven to be the file's fault: its own CPU time reached the
budget, or it ran out of its own address space), or `unavailable` (anything else: the OOM
killer, a kill from outside, starvation past the wall deadline, a malformed answer).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import resource
import select
import signal
import socket
import stat
import sys
import time
from typing import Any

# Loaded before the limits and the privilege drop: cryptography imports its OpenSSL
# backend lazily, on the first signature check.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401

from edge_certd.core.codec import context_from_json, verdict_to_json
from edge_certd.core.judgement import JudgeContext, JudgeLimits, JudgeRequest
from edge_certd.core.model import SourceKind
from edge_certd.core.verdict import judge_file
from edge_certd.core.wire import FrameReader, WireError, decode_object, encode, frame

# A request holds at most a batch or one file of policy.max_file_bytes; an answer a few KB
# per file. Anything far larger is a misbehaving peer.
MAX_FRAME = 16 * 1024 * 1024
MAX_FILES = 4096
IDLE_SECONDS = 30.0  # socket-activated: exit after this long without a request
REQUEST_SECONDS = 10.0  # a request that has begun must arrive whole within this
# RLIMIT_CPU fires on a clock tick: a child killed at its budget has used (nearly) all of it.
# Below this share of the budget a death is not the file's fault (a kill from outside).
CPU_PROVEN = 0.95
_MEMORY_EXIT = 3  # the child's MemoryError: its own address-space limit
_MIB = 1024 * 1024

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str] | None = None) -> int:
    """`server.py FD`: serve the one connection FD (a socketpair from the daemon or the CLI);
    without FD: the socket systemd passes (LISTEN_FDS), until idle."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    drop_privileges()
    if args:
        with socket.socket(fileno=int(args[0])) as conn:
            serve_connection(conn, idle=None)
        return 0
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        print("edge-certd judge: expected one socket from systemd (LISTEN_FDS=1)", file=sys.stderr)
        return 2
    with socket.socket(fileno=3) as listener:
        while select.select([listener], [], [], IDLE_SECONDS)[0]:
            conn, _ = listener.accept()
            with conn:
                serve_connection(conn, idle=REQUEST_SECONDS)
    return 0  # idle: socket activation starts the judge again on the next request


def serve_connection(conn: socket.socket, *, idle: float | None) -> None:
    """Answer requests on `conn` until it closes, stays idle for `idle` seconds, or sends
    something that is not a request."""
    reader = FrameReader(MAX_FRAME)
    while True:
        try:
            request = _read_request(conn, reader, idle)
        except (OSError, WireError, ValueError):
            return
        if request is None:
            return
        try:
            conn.sendall(_answer(*request))
        except OSError:
            return


def _read_request(
    conn: socket.socket, reader: FrameReader, idle: float | None
) -> tuple[dict[str, Any], list[bytes]] | None:
    header: dict[str, Any] | None = None
    wanted = 1
    deadline: float | None = None
    while True:
        if header is None and reader.pending:
            header = decode_object(reader.pop() or b"")
            files = header.get("files")
            if not isinstance(files, list) or len(files) > MAX_FILES:
                raise WireError("a request without its list of files")
            wanted = len(files)
        if header is not None and reader.pending >= wanted:
            return header, [reader.pop() or b"" for _ in range(wanted)]
        timeout = idle if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([conn], [], [], timeout)[0]:
            return None
        data = conn.recv(1 << 20)
        if not data:
            return None
        deadline = deadline or time.monotonic() + REQUEST_SECONDS
        reader.feed(data)


def _answer(header: dict[str, Any], datas: list[bytes]) -> bytes:
    try:
        context = context_from_json(header.get("context"))
        requests = [
            JudgeRequest(source=_text(item["source"]), data=data, kind=SourceKind(item["kind"]))
            for item, data in zip(header["files"], datas, strict=True)
        ]
    except (KeyError, TypeError, ValueError):
        return _reply("unavailable", "the judge was sent a malformed request")
    return judge_in_child(requests, context)


def judge_in_child(requests: list[JudgeRequest], context: JudgeContext) -> bytes:
    """Fork, judge in the child under hard limits, reap it, and say how it went."""
    limits = context.limits
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_end)
            code = _child(write_end, requests, context)
        finally:
            os._exit(code)
    os.close(write_end)
    reader = FrameReader(MAX_FRAME)
    deadline = time.monotonic() + limits.wall_seconds
    timed_out = False
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not select.select([pipe], [], [], remaining)[0]:
                continue
            try:
                chunk = pipe.read(1 << 20)
                if not chunk:
                    break
                reader.feed(chunk)
            except (OSError, WireError):
                break  # an answer larger than any verdict: the child is not trusted
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # a timeout or a child that closed its pipe early
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    answer = reader.pop()
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and answer is not None and not timed_out:
        return frame(encode({"outcome": "ok", "why": "", "cpu_seconds": cpu}), answer)
    if cpu >= limits.cpu_seconds * CPU_PROVEN:
        return _reply("limit", f"judging it used more than {limits.cpu_seconds} s of CPU time", cpu)
    if timed_out:
        return _reply(
            "unavailable",
            f"the judge got only {cpu:.1f} s of CPU time in {limits.wall_seconds:.0f} s "
            "(a busy or stopped machine)",
            cpu,
        )
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _MEMORY_EXIT:
        return _reply("limit", f"judging it needed more than {limits.memory_mb} MB of memory", cpu)
    return _reply("unavailable", f"the judge's child {_describe(status)}", cpu)


def _child(out: int, requests: list[JudgeRequest], context: JudgeContext) -> int:
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _limit_self(context.limits)
        verdicts: list[dict[str, Any]] = []
        cpus: list[float] = []
        for request in requests:
            before = _cpu()
            verdicts.append(verdict_to_json(judge_file(request, context, raise_memory_error=True)))
            cpus.append(round(_cpu() - before, 4))
        answer = frame(encode({"verdicts": verdicts, "cpu": cpus}))
    except MemoryError:
        return _MEMORY_EXIT
    view = memoryview(answer)
    while view:
        view = view[os.write(out, view) :]
    return 0


def _limit_self(limits: JudgeLimits) -> None:
    """Hard limits, so nothing in the child can raise them again. The address space is the
    child's own: what the forked process already maps, plus the budget."""
    cpu = limits.cpu_seconds
    # SIGXCPU at the budget; SIGKILL one second later if SIGXCPU was caught.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    space = _address_space() + limits.memory_mb * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file written, even by a parser bug
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of the judged bytes


def _address_space() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reply(outcome: str, why: str, cpu: float = 0.0) -> bytes:
    return frame(encode({"outcome": outcome, "why": why, "cpu_seconds": cpu}))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(signum).name}"
        return f"was killed by signal {signum}"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "gave a malformed answer"
    return f"ended with exit status {os.WEXITSTATUS(status)}"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


# -- dropping privileges outside systemd ---------------------------------------------------


def drop_privileges() -> None:
    """Forbid gaining privileges and being traced; as root, become `nobody` with an empty
    capability bounding set, so CapEff, CapPrm and CapBnd are all 0.

    Where the OS refuses (a seccomp filter without setuid, no `nobody`), or where `nobody`
    could not import the code (a Python built under /root, mode 0700), the rest still holds.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.geteuid() != 0 or not all(_others_can_read(p) for p in _code_dirs()):
        return
    try:
        nobody = pwd.getpwnam("nobody")
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            last_cap = int(f.read())
    except (KeyError, OSError, ValueError):
        return
    for cap in range(last_cap + 1):  # needs CAP_SETPCAP, so before setuid
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    try:
        os.setgroups([])
        os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
        # From uid 0 to another, the kernel clears the permitted and effective sets.
        os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
    except OSError:
        return  # e.g. the daemon's own seccomp filter (~@privileged)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # a uid change resets it


def _code_dirs() -> list[str]:
    """Where the judge still imports from lazily: the stdlib, cryptography and edge_certd."""
    import cryptography

    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.dirname(os.__file__), os.path.dirname(cryptography.__file__), here]


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
