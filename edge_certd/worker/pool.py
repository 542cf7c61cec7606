"""The daemon's side of the judge worker: one warm child process, reused across syncs.

Each job gets a CPU budget (RLIMIT_CPU in the child) and a wall-clock deadline (the parent
kills the child at it). While it waits, the parent calls `poll` a few times a second, so the
daemon keeps pinging systemd's watchdog and can stop on SIGTERM in the middle of a sync.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_certd.core.codec import verdict_from_json
from edge_certd.core.model import FileVerdict, Reason, Rejection, SourceKind
from edge_certd.core.policy import Rules
from edge_certd.core.text import iso
from edge_certd.core.verdict import judge_file
from edge_certd.worker.protocol import ProtocolError, encode_json, read_frame, write_frame

_POLL_INTERVAL = 0.25
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from edge_certd.worker.child import main; sys.exit(main())"
)


@dataclass(frozen=True, kw_only=True)
class Limits:
    cpu_seconds: int = 5
    memory_mb: int = 256

    @property
    def wall_seconds(self) -> float:
        # CPU time is what the child may use; wall time also covers a child that waits
        # (a loaded machine, a stopped process) rather than computes.
        return self.cpu_seconds * 3 + 2.0


class JudgeWorker:
    """Judges files in a child process. `judge` never raises except what `poll` raises."""

    def __init__(self, limits: Limits | None = None, poll: Callable[[], None] | None = None) -> None:
        self.limits = limits or Limits()
        self.poll = poll
        self._proc: subprocess.Popen[bytes] | None = None
        # Contents that exceeded a limit; judged once per process, not on every rescan.
        self._over_limit: dict[str, FileVerdict] = {}
        self.spawned = 0  # for tests and benchmarks: how many children were started
        self._rules: Rules | None = None
        self._rules_doc: dict[str, object] = {}

    def judge(
        self,
        *,
        source: str,
        data: bytes,
        kind: SourceKind,
        rules: Rules,
        now: dt.datetime,
        passwords: Sequence[bytes],
    ) -> FileVerdict:
        (verdict,) = self.judge_batch([(source, data, kind)], rules=rules, now=now, passwords=passwords)
        return verdict

    def judge_batch(
        self,
        files: Sequence[tuple[str, bytes, SourceKind]],
        *,
        rules: Rules,
        now: dt.datetime,
        passwords: Sequence[bytes],
    ) -> list[FileVerdict]:
        """Judge (source, bytes, kind) triples, in one round trip when all goes well.

        A batch that fails (a limit, a crash, a malformed answer) is judged again one file
        at a time, so that only the file at fault is refused and gets the full budget.
        """
        shas = [hashlib.sha256(data).hexdigest() for _, data, _ in files]
        results: list[FileVerdict | None] = [
            self._remembered(source, sha, kind) for (source, _, kind), sha in zip(files, shas, strict=True)
        ]
        todo = [i for i, verdict in enumerate(results) if verdict is None]
        context: dict[str, object] = {
            "rules": self._rules_json(rules),
            "now": iso(now),
            "passwords": [base64.b64encode(p).decode() for p in passwords],
        }
        if len(todo) > 1:
            answers = self._try_batch([files[i] for i in todo], context)
            if answers is not None:
                for i, verdict in zip(todo, answers, strict=True):
                    results[i] = verdict
                todo = []
        for i in todo:
            source, data, kind = files[i]
            results[i] = self._judge_one(source, data, kind, shas[i], context)
        return [verdict for verdict in results if verdict is not None]

    def _remembered(self, source: str, content_sha: str, kind: SourceKind) -> FileVerdict | None:
        memo = self._over_limit.get(f"{content_sha}:{kind}")
        if memo is None:
            return None
        return dataclasses.replace(
            memo, source=source, rejected=tuple(dataclasses.replace(r, source=source) for r in memo.rejected)
        )

    def _try_batch(
        self, files: Sequence[tuple[str, bytes, SourceKind]], context: dict[str, object]
    ) -> list[FileVerdict] | None:
        header = {**context, "files": [{"source": s, "kind": str(k)} for s, _, k in files]}
        try:
            answer = self._ask(encode_json(header), [data for _, data, _ in files])
            doc = json.loads(answer)
            verdicts = [
                verdict_from_json(item, source)
                for item, (source, _, _) in zip(doc["verdicts"], files, strict=True)
            ]
        except (_OverLimit, ProtocolError, OSError, ValueError, KeyError, TypeError):
            self._kill()  # start the one-at-a-time pass with a fresh child
            return None
        return verdicts

    def _judge_one(
        self, source: str, data: bytes, kind: SourceKind, content_sha: str, context: dict[str, object]
    ) -> FileVerdict:
        header = {**context, "files": [{"source": source, "kind": str(kind)}]}
        try:
            answer = self._ask(encode_json(header), [data])
        except _OverLimit as exc:
            verdict = _refused(source, content_sha, Reason.JUDGE_LIMIT, exc.message)
            self._over_limit[f"{content_sha}:{kind}"] = verdict
            return verdict
        except (ProtocolError, OSError) as exc:
            return _refused(
                source,
                content_sha,
                Reason.JUDGE_FAILED,
                f"edge-certd could not judge this file ({exc}); it is not trusted",
            )
        try:
            (item,) = json.loads(answer)["verdicts"]
            return verdict_from_json(item, source)
        except (ValueError, KeyError, TypeError):
            self.close()  # a worker that answers nonsense is not used again
            return _refused(
                source,
                content_sha,
                Reason.JUDGE_FAILED,
                "edge-certd could not judge this file (the judge's answer was malformed); it is not trusted",
            )

    def _rules_json(self, rules: Rules) -> dict[str, object]:
        if self._rules != rules:
            self._rules, self._rules_doc = rules, dataclasses.asdict(rules)
        return self._rules_doc

    def _ask(self, header: bytes, datas: Sequence[bytes]) -> bytes:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_frame(proc.stdin.fileno(), header, *datas)
        except OSError:
            self._reap()
            raise ProtocolError("the judge process died") from None
        deadline = time.monotonic() + self.limits.wall_seconds
        out = proc.stdout.fileno()
        try:
            while True:
                if self.poll is not None:
                    self.poll()  # may raise to cancel the sync; the child is killed below
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._kill()
                    raise _OverLimit(f"judging it took more than {self.limits.wall_seconds:.0f} s")
                ready, _, _ = select.select([out], [], [], min(_POLL_INTERVAL, remaining))
                if ready:
                    break
            return read_frame(out)
        except ProtocolError:
            code = self._reap()
            if code in (-signal.SIGXCPU, -signal.SIGKILL):
                raise _OverLimit(
                    f"judging it used more than {self.limits.cpu_seconds} s of CPU time"
                ) from None
            raise ProtocolError(f"the judge process ended ({_describe_exit(code)})") from None
        except BaseException:
            self._kill()
            raise

    def warm_up(self) -> None:
        """Start the child now, so the first file dropped later does not wait for Python
        and cryptography to load (it imports them while the parent carries on)."""
        self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        limits = json.dumps(
            {"cpu_seconds": self.limits.cpu_seconds, "memory_bytes": self.limits.memory_mb * 1024 * 1024}
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-s", "-E", "-c", _CHILD, _PACKAGE_ROOT, limits],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        self.spawned += 1
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        self._reap()

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        """End the child at once: it holds no state, and a stuck one must not hold up a
        daemon that is stopping."""
        self._kill()


def judge_in_worker(
    worker: JudgeWorker | None,
    *,
    source: str,
    data: bytes | None,
    problem: tuple[Reason, str] | None,
    kind: SourceKind,
    rules: Rules,
    now: dt.datetime,
    passwords: Sequence[bytes],
) -> FileVerdict:
    """A file that could not be read needs no parsing: its verdict is made here."""
    if data is None or worker is None:
        return judge_file(source, data, problem, kind, rules, now, passwords)
    return worker.judge(source=source, data=data, kind=kind, rules=rules, now=now, passwords=passwords)


class _OverLimit(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _refused(source: str, content_sha: str, code: Reason, message: str) -> FileVerdict:
    if code is Reason.JUDGE_LIMIT:
        message = (
            f"{message}, so it is not trusted; a root CA file is judged in "
            "milliseconds, so this file is malformed or built to exhaust the device"
        )
    return FileVerdict(
        source=source,
        format="unknown",
        content_sha256=content_sha,
        rejected=(Rejection(source=source, code=code, message=message),),
    )


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"
