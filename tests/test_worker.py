"""The judge worker: a real child process, real rlimits, real signals.

What a bomb would do is reproduced with the kernel's own means: a stopped child stands in
for one that never answers, SIGXCPU is what RLIMIT_CPU delivers, and /proc shows the limits.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path

import pytest
from support.certs import CA

from edge_certd.core.model import Reason, SourceKind
from edge_certd.core.policy import Rules
from edge_certd.worker import child
from edge_certd.worker.pool import JudgeWorker, Limits

NOW = dt.datetime.now(dt.UTC)


def judge(worker: JudgeWorker, data: bytes, source: str = "/drop/x.pem"):  # type: ignore[no-untyped-def]
    return worker.judge(source=source, data=data, kind=SourceKind.DROP, rules=Rules(), now=NOW, passwords=())


def child_pid(worker: JudgeWorker) -> int:
    assert worker._proc is not None
    return worker._proc.pid


def test_a_good_root_is_judged_in_the_child_and_the_child_is_reused() -> None:
    worker = JudgeWorker(Limits())
    try:
        first, second = CA.root("Worker Root A"), CA.root("Worker Root B")
        (accepted,) = judge(worker, first.cert_pem).accepted
        assert accepted.subject == "O=edge-certd tests,CN=Worker Root A" or "Worker Root A" in (
            accepted.subject
        )
        pid = child_pid(worker)
        assert judge(worker, second.cert_pem).accepted
        assert child_pid(worker) == pid and worker.spawned == 1
        assert pid != os.getpid()
    finally:
        worker.close()


def test_the_child_runs_under_cpu_memory_and_file_size_limits() -> None:
    worker = JudgeWorker(Limits(cpu_seconds=3, memory_mb=200))
    try:
        judge(worker, CA.root("Limits Root").cert_pem)
        limits = Path(f"/proc/{child_pid(worker)}/limits").read_text()
        rows = {line[:26].strip(): line[26:].split() for line in limits.splitlines()[1:]}
        assert rows["Max address space"][:2] == [str(200 * 1024 * 1024)] * 2
        assert rows["Max file size"][:2] == ["0", "0"]
        assert rows["Max cpu time"][0] != "unlimited"
        status = Path(f"/proc/{child_pid(worker)}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        # Root outside the unit drops to nobody, unless nobody could not import the code
        # (a Python built under /root, as the PyPI venv here is).
        readable = all(child._others_can_read(p) for p in child._code_dirs())
        assert (uid != "0") == (os.geteuid() == 0 and readable), uid
        no_new_privs = next(line for line in status.splitlines() if line.startswith("NoNewPrivs"))
        assert no_new_privs.split()[1] == "1"
    finally:
        worker.close()


def test_a_child_that_never_answers_is_killed_at_the_deadline_and_the_next_file_is_fine() -> None:
    polls: list[int] = []
    worker = JudgeWorker(Limits(cpu_seconds=1))

    def count_polls() -> None:
        polls.append(1)

    try:
        judge(worker, CA.root("Warm-up Root").cert_pem)  # a warm child to stop
        os.kill(child_pid(worker), signal.SIGSTOP)  # it will never answer the next job
        worker.poll = count_polls
        hung = judge(worker, CA.root("Hung Root").cert_pem, "/drop/hung.pem")
        assert [r.code for r in hung.rejected] == [Reason.JUDGE_LIMIT]
        assert hung.rejected[0].source == "/drop/hung.pem"
        assert "more than 5 s" in hung.rejected[0].message
        # The daemon's loop was called throughout the wait (watchdog pings, SIGTERM checks).
        assert len(polls) >= 10
        worker.poll = None
        good = judge(worker, CA.root("After Root").cert_pem)
        assert good.accepted and not good.rejected and worker.spawned == 2
    finally:
        worker.close()


def test_a_child_killed_by_its_cpu_limit_rejects_only_that_file() -> None:
    worker = JudgeWorker(Limits(cpu_seconds=2))

    def xcpu() -> None:
        # What RLIMIT_CPU sends when exceeded. The child was stopped before the job, so the
        # signal is pending when it continues and ends it before it can answer.
        os.kill(child_pid(worker), signal.SIGXCPU)
        os.kill(child_pid(worker), signal.SIGCONT)

    try:
        judge(worker, CA.root("Warm Root").cert_pem)
        os.kill(child_pid(worker), signal.SIGSTOP)
        worker.poll = xcpu
        content = CA.root("Bomb Stand-in").cert_pem
        bomb = judge(worker, content, "/drop/bomb.pem")
        worker.poll = None
        assert [r.code for r in bomb.rejected] == [Reason.JUDGE_LIMIT]
        assert "CPU time" in bomb.rejected[0].message
        # The same content is not judged again by this process: the verdict is remembered,
        # under the name it has now.
        spawned = worker.spawned
        again = judge(worker, content, "/drop/renamed.pem")
        assert [(r.code, r.source) for r in again.rejected] == [(Reason.JUDGE_LIMIT, "/drop/renamed.pem")]
        assert worker.spawned == spawned
        assert judge(worker, CA.root("Next Root").cert_pem).accepted
        assert worker.spawned == spawned + 1
    finally:
        worker.close()


def test_an_answer_that_is_not_a_verdict_is_refused(tmp_path: Path) -> None:
    """A compromised child could answer anything; the parent decodes strictly."""
    from edge_certd.core.codec import verdict_from_json

    root = CA.root("Codec Root")
    worker = JudgeWorker(Limits())
    try:
        good = judge(worker, root.cert_pem)
    finally:
        worker.close()
    from edge_certd.core.codec import verdict_to_json

    doc = verdict_to_json(good)
    assert verdict_from_json(doc, "/drop/x.pem") == good
    forged = dict(doc, accepted=[dict(doc["accepted"][0], sha256="00" * 32)])
    for bad in (forged, {"accepted": "x"}, [], {**doc, "rejected": [{"code": "rm -rf"}]}):
        with pytest.raises(ValueError):
            verdict_from_json(bad, "/drop/x.pem")


def test_a_batch_is_judged_in_one_round_trip_and_answers_in_order() -> None:
    roots = [CA.root(f"Batch Root {i}") for i in range(3)]
    files = [(f"/drop/{i}.pem", r.cert_pem, SourceKind.DROP) for i, r in enumerate(roots)]
    files.insert(1, ("/drop/junk.pem", b"not a certificate", SourceKind.DROP))
    worker = JudgeWorker(Limits())
    try:
        verdicts = worker.judge_batch(files, rules=Rules(), now=NOW, passwords=())
    finally:
        worker.close()
    assert [v.source for v in verdicts] == [f[0] for f in files]
    assert [bool(v.accepted) for v in verdicts] == [True, False, True, True]
    assert verdicts[1].rejected[0].code is Reason.UNPARSEABLE
    assert worker.spawned == 1
