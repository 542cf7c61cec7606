"""The control socket's requests, served by the loop.

`control.py` reads and authorises each request on its own thread and queues it; this
module says what each request does once the loop takes it (`add`, `remove`, `sync`,
`reload`) and what the client hears back. The loop decides *when* (after the signals, so a
stop is never held up by a request); the work goes through `Host`, the few things a
request may ask of the loop, so this module never imports it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from edge_certd.config import Config
from edge_certd.core.errors import EdgeCertdError, NotFound, UsageError
from edge_certd.core.model import SyncResult
from edge_certd.daemon.control import ControlServer, Job, Peer, Request, RequestError, error_reply
from edge_certd.daemon.stopping import SyncCancelled
from edge_certd.sync import journal as events
from edge_certd.sync import operations, report
from edge_certd.sync.engine import Engine
from edge_certd.worker.pool import JudgeWorker

STOPPING = "edge-certd is stopping; ask again when it is back"


class Host(Protocol):
    """What serving a request needs from the daemon's loop (`loop.Daemon`)."""

    config: Config
    engine: Engine
    worker: JudgeWorker
    status_now: str  # the STATUS= line
    degraded: str | None  # why the last sync failed, while it stays failed
    last_result: SyncResult | None

    @property
    def stopping(self) -> bool:
        """A stop is queued: no new work starts."""
        ...

    def sync(self, why: str) -> None:
        """One sync, as the loop runs it; failures set `degraded`."""
        ...

    def reload(self) -> str | None:
        """Re-read the configuration; why it was refused, or None."""
        ...

    def adopt(self, result: SyncResult) -> None:
        """Take a request's sync as the latest, and say so in STATUS= and daemon.json."""
        ...

    def fail(self, reason: str) -> None:
        """A request's sync failed: degrade, retry with backoff, and say so."""
        ...


def open_control(config: Config, wake: Callable[[], None]) -> ControlServer | None:
    """The control socket (systemd's, or bound here); None, said once, when there is none."""
    try:
        return ControlServer.open(
            config.control_socket,
            config.sources.trusted_group,
            config.policy.max_file_bytes,
            wake=wake,
        )
    except OSError as exc:
        events.emit(
            "config",
            f"control socket {config.control_socket} not available ({exc.strerror or exc}); "
            "edge-certd add, remove and sync work as root only, outside the daemon",
            logging.WARNING,
            reason="control_socket",
        )
        return None


def follow_config(control: ControlServer, config: Config) -> None:
    """Who may ask, and how much they may send, follow a reloaded configuration."""
    control.group = config.sources.trusted_group
    control.max_file_bytes = config.policy.max_file_bytes


def serve_jobs(host: Host, control: ControlServer) -> None:
    """Answer what clients asked (root's first). One sync answers every `sync` queued
    before it: a hundred clients asking at once cost one sync, not a hundred."""
    synced: dict[str, Any] | None = None
    for job in control.take():
        if host.stopping:
            job.answer(error_reply("apply", STOPPING))
        elif job.request.op == "sync" and synced is not None:
            job.answer(synced)
        else:
            reply = _serve_one(host, job)
            if job.request.op == "sync":
                synced = reply
            job.answer(reply)


def _serve_one(host: Host, job: Job) -> dict[str, Any]:
    """One request's answer; whatever a handler raises is that client's answer, logged
    once, and the daemon goes on."""
    try:
        return _handle(host, job.peer, job.request)
    except RequestError as exc:
        return error_reply(exc.kind, exc.message)
    except Exception as exc:  # noqa: BLE001 - one request must never end the daemon
        who = "root" if job.peer.uid == 0 else f"uid {job.peer.uid}"
        events.emit(
            "control",
            f"internal error while serving `edge-certd {job.request.op}` for {who}: {exc!r}\n"
            f"{traceback.format_exc()}",
            logging.ERROR,
            reason="internal_error",
        )
        return error_reply(
            "internal",
            f"edge-certd hit an internal error ({type(exc).__name__}) serving this request; "
            "see journalctl -u edge-certd",
        )


def _handle(host: Host, peer: Peer, request: Request) -> dict[str, Any]:
    """Do what a client asked, as the daemon: under its unit, in its journal."""
    who = "root" if peer.uid == 0 else f"uid {peer.uid}"
    try:
        if request.op == "reload":
            refused = host.reload()
            if refused is not None:
                raise RequestError("config", refused)
            return {"text": f"configuration reloaded; {host.status_now}"}
        if request.op == "sync":
            host.sync(f"edge-certd sync by {who}")
            if host.degraded or host.last_result is None:
                raise RequestError("apply", host.degraded or "the sync did not finish")
            return report.summary("sync", host.last_result)
        if request.op == "add":
            verdicts = operations.judge_items(host.config, host.worker, request.files)
            added = operations.add_judged(host.engine, request.files, verdicts)
            host.adopt(added.result)
            return report.summary("add", added.result, added.verdicts)
        what = request.args.get("what")
        if not isinstance(what, str) or not what:
            raise RequestError("usage", "remove needs a SHA-256 prefix or a file name")
        result = operations.remove(host.engine.config, what, engine=host.engine)
        host.adopt(result)
        return report.summary("remove", result)
    except SyncCancelled:
        raise RequestError("apply", STOPPING) from None
    except NotFound as exc:
        raise RequestError("notfound", str(exc)) from None
    except UsageError as exc:
        raise RequestError("usage", str(exc)) from None
    except EdgeCertdError as exc:
        host.fail(str(exc))
        raise RequestError("apply", str(exc)) from None
