"""The judge: a real server process, one real forked child per request, real rlimits and
real signals from outside.

The costly file is a real one: a PKCS#12 whose MAC asks for 1,000,000 iterations (the
ceiling edge-certd allows), tried with many passwords, so judging it burns real CPU time.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.certs import CA
from test_judging_hardened import _pfx_with

from edge_certd.core.judgement import JudgeContext, JudgeLimits, JudgeRequest, Rules
from edge_certd.core.model import Reason, SourceKind
from edge_certd.worker import server
from edge_certd.worker.pool import Judgement, JudgeWorker, Outcome

NOW = dt.datetime.now(dt.UTC)
COSTLY = _pfx_with(1_000_000)
# Each password is one 1,000,000-iteration MAC check (about 0.1 s of CPU each, more on a
# slow board): forty of them keep a child busy for seconds.
MANY_PASSWORDS = tuple(b"password %d" % i for i in range(40))


def context(cpu: int = 5, memory_mb: int = 256, passwords: tuple[bytes, ...] = ()) -> JudgeContext:
    return JudgeContext(
        rules=Rules(), now=NOW, passwords=passwords, limits=JudgeLimits(cpu_seconds=cpu, memory_mb=memory_mb)
    )


def request(data: bytes, source: str = "/drop/x.pem") -> JudgeRequest:
    return JudgeRequest(source=source, data=data, kind=SourceKind.DROP)


def judge_one(worker: JudgeWorker, data: bytes, ctx: JudgeContext | None = None) -> Judgement:
    (judgement,) = worker.judge([request(data)], ctx or context())
    return judgement


# How long a test with a 1 s CPU budget keeps asking while a loaded machine starves the judge.
STARVED_FOR = 240.0


def _starved(judgement: Judgement) -> bool:
    """Starved by a loaded machine: the child's CPU time stayed under the budget within the
    wall deadline, or the judge's answer missed the client's own deadline. Both are
    UNAVAILABLE, and nothing else in these tests is."""
    return judgement.outcome is Outcome.UNAVAILABLE


def judge_until_not_starved(worker: JudgeWorker, data: bytes, ctx: JudgeContext) -> Judgement:
    """A 1 s budget has a 5 s wall deadline; on a loaded machine (CI runs two CPU-bound
    processes beside the suite) the child may get less than 1 s of CPU in 5 s, which is
    correctly `unavailable` (starvation). Try again then, for as long as a loaded machine
    needs: the file's own outcome is LIMIT, and starvation is never mistaken for it."""
    deadline = time.monotonic() + STARVED_FOR
    while True:
        judgement = judge_one(worker, data, ctx)
        if not _starved(judgement) or time.monotonic() > deadline:
            return judgement


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class CatchChild:
    """Judges in a thread and hands over the judge's child while it judges."""

    def __init__(self, worker: JudgeWorker, data: bytes, ctx: JudgeContext) -> None:
        worker.warm_up()
        self.server_pid = worker.server_pid
        assert self.server_pid is not None
        self.result: list[Judgement] = []
        self.thread = threading.Thread(target=lambda: self.result.extend(worker.judge([request(data)], ctx)))
        self.thread.start()

    def child(self, timeout: float = 60.0) -> int:
        assert self.server_pid is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = children_of(self.server_pid)
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError("the judge forked no child")

    def judgement(self, timeout: float = 120.0) -> Judgement:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the judgement did not end"
        (judgement,) = self.result
        return judgement


def _applied_limits(child: int, timeout: float = 60.0) -> dict[str, list[str]]:
    """The child's /proc/<pid>/limits once it has applied them all: it is caught right after
    the fork, and sets RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, then RLIMIT_CORE, in that order."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {
            line[:26].strip(): line[26:].split()
            for line in Path(f"/proc/{child}/limits").read_text().splitlines()[1:]
        }
        if rows["Max core file size"][:2] == ["0", "0"] or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


@pytest.fixture
def worker() -> JudgeWorker:
    judge = JudgeWorker(socket_path="")  # the judge as a child process, as outside systemd
    yield judge  # type: ignore[misc]
    judge.close()


def test_a_batch_is_judged_in_one_server_and_answers_in_order(worker: JudgeWorker) -> None:
    roots = [CA.root(f"Batch Root {i}") for i in range(3)]
    requests = [request(r.cert_pem, f"/drop/{i}.pem") for i, r in enumerate(roots)]
    requests.insert(1, request(b"not a certificate", "/drop/junk.pem"))
    judgements = worker.judge(requests, context())
    assert [j.verdict.source for j in judgements] == [r.source for r in requests]
    assert [bool(j.verdict.accepted) for j in judgements] == [True, False, True, True]
    assert judgements[1].verdict.rejected[0].code is Reason.UNPARSEABLE
    assert {j.outcome for j in judgements} == {Outcome.OK}
    assert judge_one(worker, CA.root("Second Request").cert_pem).verdict.accepted
    assert worker.spawned == 1  # one server, a child per request


def two_batches(label: str) -> tuple[list[JudgeRequest], list[JudgeRequest]]:
    """A root then junk, and junk then a root: each batch's answers must stay its own."""
    first = [request(CA.root(f"{label} Root A").cert_pem, "/drop/a.pem"), request(b"junk", "/drop/j.pem")]
    second = [
        request(b"more junk", "/drop/k.pem"),
        request(CA.root(f"{label} Root B").cert_pem, "/drop/b.pem"),
    ]
    return first, second


FIRST_ANSWERS = [("/drop/a.pem", True), ("/drop/j.pem", False)]
SECOND_ANSWERS = [("/drop/k.pem", False), ("/drop/b.pem", True)]


def accepted_by_source(judgements: list[Judgement]) -> list[tuple[str, bool]]:
    return [(j.verdict.source, bool(j.verdict.accepted)) for j in judgements]


def test_the_next_batch_goes_out_while_the_answer_before_it_is_decoded(worker: JudgeWorker) -> None:
    """Pipelining (issue 24, B6): `collect(then)` runs `then` once the judge is free, and
    each batch still gets its own answers, in order."""
    first, second = two_batches("Pipe")
    worker.submit(first, context())
    sent: list[str] = []
    answers = worker.collect(then=lambda: (worker.submit(second, context()), sent.append("second")))
    assert sent == ["second"]
    assert accepted_by_source(answers) == FIRST_ANSWERS
    assert accepted_by_source(worker.collect()) == SECOND_ANSWERS
    assert worker.spawned == 1


def test_a_batch_never_collected_is_not_read_as_the_next_ones_answer(worker: JudgeWorker) -> None:
    worker.submit([request(b"junk 1", "/drop/1.pem"), request(b"junk 2", "/drop/2.pem")], context())
    roots = [request(CA.root(f"After Abandon {i}").cert_pem, f"/drop/r{i}.pem") for i in range(2)]
    worker.submit(roots, context())  # the first is abandoned: its connection (and child) go
    assert accepted_by_source(worker.collect()) == [("/drop/r0.pem", True), ("/drop/r1.pem", True)]


def test_a_malformed_answer_after_the_next_batch_went_out_costs_both_a_file_by_file_retry(
    worker: JudgeWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer fails to decode after `then` sent the second batch: the connection
    goes, with the second batch on it; both are judged again one file at a time, and no
    answer lands on the wrong file."""
    from edge_certd.worker import pool

    real, calls = pool.verdict_from_json, [0]

    def once_malformed(item: object, source: str):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("malformed verdict")
        return real(item, source)

    monkeypatch.setattr(pool, "verdict_from_json", once_malformed)
    first, second = two_batches("Retry")
    worker.submit(first, context())
    answers = worker.collect(then=lambda: worker.submit(second, context()))
    assert accepted_by_source(answers) == FIRST_ANSWERS
    answers = worker.collect()
    assert accepted_by_source(answers) == SECOND_ANSWERS
    assert {j.outcome for j in answers} == {Outcome.OK}
    assert worker.spawned == 2  # the first judge went with the malformed answer


def test_a_file_that_uses_its_whole_cpu_budget_is_refused_as_judge_limit(worker: JudgeWorker) -> None:
    bomb = judge_until_not_starved(worker, COSTLY, context(cpu=1, passwords=MANY_PASSWORDS))
    assert bomb.outcome is Outcome.LIMIT
    assert [r.code for r in bomb.verdict.rejected] == [Reason.JUDGE_LIMIT]
    assert "more than 1 s of CPU time" in bomb.verdict.rejected[0].message
    # The server lives on, and judges the next file.
    assert judge_one(worker, CA.root("After The Bomb").cert_pem).verdict.accepted and worker.spawned == 1


def test_new_limits_in_a_request_reach_the_running_judge(worker: JudgeWorker) -> None:
    """What `systemctl reload` with new policy.judge_* does: the next request carries them."""
    generous = judge_one(worker, COSTLY, context(cpu=60, passwords=MANY_PASSWORDS[:8]))
    assert generous.outcome is Outcome.OK
    assert [r.code for r in generous.verdict.rejected] == [Reason.PKCS12_SEALED]
    tight = judge_until_not_starved(worker, COSTLY, context(cpu=1, passwords=MANY_PASSWORDS))
    assert tight.outcome is Outcome.LIMIT and worker.spawned == 1
    # And the live child runs under exactly those limits, hard ones.
    catch = CatchChild(worker, COSTLY, context(cpu=7, memory_mb=300, passwords=MANY_PASSWORDS))
    rows = _applied_limits(catch.child())
    catch.judgement()
    assert rows["Max cpu time"][:2] == ["7", "8"]
    soft, hard = rows["Max address space"][:2]
    assert soft == hard and int(soft) > 300 * 1024 * 1024  # what the fork maps, plus 300 MB
    assert rows["Max file size"][:2] == ["0", "0"]
    assert rows["Max core file size"][:2] == ["0", "0"]


def test_a_file_that_needs_more_memory_than_its_budget_is_refused_as_judge_limit(worker: JudgeWorker) -> None:
    # 8 MB of base64 in one PEM block: decoding it needs 6 MB more than the bytes themselves.
    body = b"\n".join([b"A" * 64] * (8 * 1024 * 1024 // 65))
    bomb = b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n"
    refused = judge_one(worker, bomb, context(memory_mb=2))
    assert refused.outcome is Outcome.LIMIT
    assert [r.code for r in refused.verdict.rejected] == [Reason.JUDGE_LIMIT]
    assert "more than 2 MB of memory" in refused.verdict.rejected[0].message
    judged = judge_one(worker, bomb, context(memory_mb=256))
    assert judged.outcome is Outcome.OK and judged.verdict.rejected[0].code is not Reason.JUDGE_LIMIT


def test_a_sigkill_of_the_judges_child_from_outside_is_not_the_files_fault(worker: JudgeWorker) -> None:
    """The OOM killer, or any process running as the judge's user: unavailable, never judge_limit."""
    catch = CatchChild(worker, COSTLY, context(cpu=60, passwords=MANY_PASSWORDS))
    os.kill(catch.child(), signal.SIGKILL)
    killed = catch.judgement()
    assert killed.outcome is Outcome.UNAVAILABLE
    assert [r.code for r in killed.verdict.rejected] == [Reason.JUDGE_FAILED]
    assert "killed by SIGKILL" in killed.verdict.rejected[0].message
    # Nothing is remembered: the same bytes are judged afresh and pass this time.
    again = judge_one(worker, COSTLY, context(cpu=60))
    assert again.outcome is Outcome.OK and [r.code for r in again.verdict.rejected] == [Reason.PKCS12_SEALED]


def test_a_sigxcpu_from_outside_before_the_budget_is_not_the_files_fault(worker: JudgeWorker) -> None:
    catch = CatchChild(worker, COSTLY, context(cpu=60, passwords=MANY_PASSWORDS))
    os.kill(catch.child(), signal.SIGXCPU)
    assert catch.judgement().outcome is Outcome.UNAVAILABLE


def test_a_stopped_child_past_its_deadline_is_held_not_refused(worker: JudgeWorker) -> None:
    """Starvation: the wall-clock deadline passes while the file's own CPU time stays low."""
    polls: list[int] = []
    worker.poll = lambda: polls.append(1)
    ctx = context(cpu=1, passwords=MANY_PASSWORDS)  # a wall deadline of 5 s
    catch = CatchChild(worker, COSTLY, ctx)
    os.kill(catch.child(), signal.SIGSTOP)
    stopped = catch.judgement()
    assert stopped.outcome is Outcome.UNAVAILABLE
    assert "CPU time in 5 s" in stopped.verdict.rejected[0].message
    assert len(polls) >= 10  # the daemon's loop ran throughout (watchdog, SIGTERM)
    worker.poll = None
    assert judge_one(worker, CA.root("After The Stop").cert_pem).verdict.accepted


def test_a_batch_that_fails_blames_only_the_file_at_fault(worker: JudgeWorker) -> None:
    requests = [request(CA.root("Good A").cert_pem, "/drop/a.pem"), request(COSTLY, "/drop/bomb.pfx")]
    requests.append(request(CA.root("Good B").cert_pem, "/drop/b.pem"))
    deadline = time.monotonic() + STARVED_FOR
    while True:  # on a loaded machine the 1 s budget may be starved: not the file's fault
        judgements = worker.judge(requests, context(cpu=1, passwords=MANY_PASSWORDS))
        if not any(_starved(j) for j in judgements) or time.monotonic() > deadline:
            break
    assert [j.outcome for j in judgements] == [Outcome.OK, Outcome.LIMIT, Outcome.OK]


def test_an_unreachable_judge_makes_every_file_unavailable_at_once(tmp_path: Path) -> None:
    absent = JudgeWorker(socket_path=str(tmp_path / "no-judge"))
    judgements = absent.judge([request(b"a", "/drop/a"), request(b"b", "/drop/b")], context())
    assert [j.outcome for j in judgements] == [Outcome.UNAVAILABLE] * 2
    assert "cannot be reached" in judgements[0].verdict.rejected[0].message


def test_the_judge_answers_through_a_listening_socket_as_under_systemd(tmp_path: Path) -> None:
    """The socket-activated mode: LISTEN_FDS=1, a connection per request, exit when idle."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "judge"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    code = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.environ['LISTEN_FDS'] = '1'; from edge_certd.worker import server; "
        "server.IDLE_SECONDS = 2.0; sys.exit(server.main([]))"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(listener.fileno())],
        pass_fds=(listener.fileno(),),
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        client = JudgeWorker(socket_path=str(path))
        assert judge_one(client, CA.root("Socket Root").cert_pem).verdict.accepted
        assert judge_one(client, b"junk").verdict.rejected[0].code is Reason.UNPARSEABLE
        assert proc.wait(timeout=60) == 0  # idle: it ended by itself
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop is root's")
def test_the_judge_outside_systemd_runs_as_nobody_with_no_capabilities(worker: JudgeWorker) -> None:
    readable = all(server._others_can_read(p) for p in server._code_dirs())
    if not readable:
        pytest.skip("nobody could not import this Python (e.g. a pyenv build under /root)")
    catch = CatchChild(worker, COSTLY, context(cpu=60, passwords=MANY_PASSWORDS[:20]))
    child = catch.child()
    assert worker.server_pid is not None
    seen = {"server": status_of(worker.server_pid), "child": status_of(child)}
    catch.judgement()
    for who, status in seen.items():
        assert status["Uid"].split() == ["65534"] * 4, who
        assert status["Groups"] == "", who
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (who, cap)
        assert status["NoNewPrivs"] == "1", who


def test_a_malformed_request_gets_an_unavailable_answer_not_a_crash() -> None:
    from edge_certd.core.wire import decode_object, encode, frame

    answer = server._answer({"context": {"rules": "x"}, "files": []}, [])
    assert decode_object(answer[4:])["outcome"] == "unavailable"
    assert frame(encode({"a": 1}))  # the frame helper is what both sides use
