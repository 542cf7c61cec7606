"""`edge-certd run`: the Type=notify service.

Signal handlers and the watcher thread only record what happened and write a byte to a
self-pipe. One loop wakes up, decides, and does all the work: syncs after a settle
window, retries with backoff, rescans, checks expiry and pings the watchdog.

What it does at those moments lives beside it: `requests` (the control socket's jobs),
`expiry` (the warnings and their memory), `record` (daemon.json and the metrics file),
`stopping` (a stop that reaches a sync while files are judged).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import selectors
import signal
import time
import traceback
from collections import deque
from types import FrameType

from edge_certd.config import load_config
from edge_certd.core.errors import ApplyError, ConfigError, EdgeCertdError
from edge_certd.core.hold import next_end
from edge_certd.core.model import SyncResult
from edge_certd.daemon.clock import ClockWatch
from edge_certd.daemon.control import ControlServer
from edge_certd.daemon.expiry import ExpiryWarnings
from edge_certd.daemon.gateway import GatewayWatch
from edge_certd.daemon.notify import Notifier
from edge_certd.daemon.record import record_daemon
from edge_certd.daemon.requests import follow_config, open_control, serve_jobs
from edge_certd.daemon.startup import start_line
from edge_certd.daemon.status import status_line
from edge_certd.daemon.stopping import SyncCancelled
from edge_certd.daemon.watcher import SourceWatcher
from edge_certd.store.fsutil import remove_stale_temp_files
from edge_certd.store.names import package_dirs
from edge_certd.store.state import DAEMON_NAME
from edge_certd.sync import journal as events
from edge_certd.sync import metrics
from edge_certd.sync.engine import Engine
from edge_certd.worker.pool import JudgeWorker

# A burst that never pauses still gets synced after this many settle windows.
MAX_SETTLE_WINDOWS = 10
# A file written without a close (an mmap, a crashed scp) is read after this long anyway.
BUSY_MAX_AGE = 120.0


# Clock steps closer together than this are one: said once, acted on once.
CLOCK_STEP_QUIET = 60.0


class Daemon:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.config, _ = load_config(config_path)
        self.requests: deque[str] = deque()  # "reload", "stop", "rescan" from signal handlers
        # One warm judge process for the daemon's life; see edge_certd/worker.
        self.worker = JudgeWorker(poll=self._poll_while_judging)
        self.engine = Engine(self.config, heartbeat=self._heartbeat, worker=self.worker)
        self.last_result: SyncResult | None = None
        self.notifier = Notifier()
        self._last_ping = 0.0
        self.control: ControlServer | None = None
        self.expiry = ExpiryWarnings()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watcher = SourceWatcher(self.wake)
        # The gateway watch: the probe unit writes its result; this watcher only wakes the loop.
        self.gateway = GatewayWatch(self.config)
        self._clock_said_at: float | None = None
        self.probe_watcher = SourceWatcher(self.wake)
        self.degraded: str | None = None
        self.status_now = ""
        self.config_problem: str | None = None  # a reload refused; the old config runs
        self.retry_delay = 0.0
        self.retry_at: float | None = None
        self.dirty_since: float | None = None
        self.last_event: float = 0.0
        self.expiry_checked: dt.datetime | None = None
        self._hold_fired: dt.datetime | None = None  # the hold end the timer last synced for

    # -- called from other threads and signal handlers: record and wake, nothing else --

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is already due to wake

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.requests.append("reload" if signum == signal.SIGHUP else "stop")
        self.wake()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        # The kernel may deliver a signal to a watcher thread; then select() in this thread
        # is not interrupted and the Python handler waits for it. The C-level handler writes
        # to this fd from any thread, so the loop wakes and the handler runs at once.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # Only the daemon writes daemon.json, so a temp file of it is a killed daemon's.
        remove_stale_temp_files(self.config.state_dir, (DAEMON_NAME,))
        # Every descriptor the loop keeps is opened before the first inotify watch, and the
        # selector is poll(), which holds none: watchdog (2.2) may close an inotify
        # descriptor number twice when a watched directory is deleted, and a descriptor
        # that had taken that number meanwhile was closed under us (an epoll selector died
        # with EINVAL right after READY=1).
        clock = ClockWatch()
        self.worker.warm_up()
        selector = selectors.PollSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        if clock.fd is not None:
            selector.register(clock.fd, selectors.EVENT_READ)
        # Its thread reads each request and wakes this loop through the self-pipe.
        control = self.control = open_control(self.config, self.wake)
        if control is not None:
            control.start()
        self._start_watching()
        self._watch_gateway()
        events.emit("started", start_line(self.config))
        self.sync("start-up")
        self._check_expiry()
        self.notifier.ready(self.status_now)
        now = time.monotonic()
        next_ping = now
        next_rescan = now + self.config.watch.rescan_interval
        next_expiry = now + self.config.expiry.check_interval
        try:
            while True:
                now = time.monotonic()
                if self.notifier.watchdog_interval and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + self.notifier.watchdog_interval
                    self._refresh_status()  # "checked 2 min ago" ages with the clock
                deadlines = [next_rescan, next_expiry]
                if self.notifier.watchdog_interval:
                    deadlines.append(next_ping)
                if self.dirty_since is not None:
                    deadlines.append(self._settle_deadline())
                if self.retry_at is not None:
                    deadlines.append(self.retry_at)
                hold_end, hold_at = self._hold_deadline()
                if hold_at is not None:
                    # At most a day at a time: poll() takes no timeout past 24.8 days, and the
                    # end is computed again from the wall clock at each wake.
                    deadlines.append(min(hold_at, now + 86400.0))
                timeout = max(0.0, min(deadlines) - time.monotonic())
                ready = {key.fd for key, _ in selector.select(timeout)}
                if self._wake_r in ready:
                    self._drain_pipe()
                clock_set = clock.acknowledge()
                # A clock stepped ten times a second must not make ten journal lines and ten
                # expiry checks a second: said at most once a minute. Every step still makes a
                # sync, coalesced by the settle window like any burst.
                clock_news = clock_set and self._clock_step_news(time.monotonic())
                if clock_news:
                    # NTP stepped the clock: roots refused as not yet valid (or expired)
                    # are judged again now, and the expiry warnings follow the new time.
                    events.emit(
                        "config", "the system clock was set; judging every source again", reason="clock_set"
                    )
                while self.requests:
                    request = self.requests.popleft()
                    if request == "stop":
                        return self._stop()
                    if request == "reload":
                        self.reload()
                if control is not None:
                    # After the signals: a stop is not held up by a request.
                    serve_jobs(self, control)
                changed, rewatch = self.watcher.take()
                probed, reprobe = self.probe_watcher.take()
                if reprobe:
                    self._watch_gateway(plan=False)
                if (probed or reprobe) and self.gateway.refresh(dt.datetime.now(dt.UTC)):
                    self._publish()
                    # A new probe may show the gateway moved off a held root: sync, and the
                    # hold's decision (core/hold.py) reads the new result.
                    probed = bool(self.last_result and self.last_result.held_for_gateway)
                else:
                    probed = False
                changed = changed or clock_set or probed
                now = time.monotonic()
                if clock_news:
                    next_expiry = now
                if rewatch:
                    self._start_watching()
                    changed = True
                if changed:
                    self.dirty_since = self.dirty_since or now
                    self.last_event = now
                if self.dirty_since is not None and now >= self._settle_deadline():
                    self.sync("change")
                elif self.retry_at is not None and now >= self.retry_at:
                    self.sync("retry")
                if now >= next_rescan:
                    self._start_watching()  # a directory may have come back
                    self.sync("rescan")
                    next_rescan = now + self.config.watch.rescan_interval
                if hold_at is not None and now >= hold_at:
                    self._hold_fired = hold_end  # once per end, even if that sync fails
                    self.sync("grace-ended")
                if now >= next_expiry:
                    self._check_expiry()
                    next_expiry = now + self.config.expiry.check_interval
        finally:
            signal.set_wakeup_fd(-1)
            self.watcher.stop()
            self.probe_watcher.stop()
            self.worker.close()
            selector.close()
            clock.close()
            if control is not None:
                control.close()

    def _settle_deadline(self) -> float:
        settle = self.config.watch.settle_ms / 1000.0
        assert self.dirty_since is not None
        return min(self.last_event + settle, self.dirty_since + settle * MAX_SETTLE_WINDOWS)

    def _hold_deadline(self) -> tuple[dt.datetime | None, float | None]:
        """The soonest end of a grace hold, and when (monotonic) to sync for it: a second
        after, so the sync's clock is past it. None when nothing is held or it already fired."""
        end = next_end(self.last_result.held_for_gateway) if self.last_result else None
        if end is None or end == self._hold_fired:
            return None, None
        wait = max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds())
        return end, time.monotonic() + wait + 1.0

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _start_watching(self) -> None:
        try:
            self.engine.ensure_drop_dir()
        except EdgeCertdError as exc:
            events.emit("source_error", str(exc), logging.WARNING, source=self.config.drop_dir)
        dirs = [self.config.drop_dir, *self.config.keyvault_export_dirs]
        if self.config.package_roots_dir:  # a package's directory appearing makes a rewatch
            dirs += [self.config.package_roots_dir, *package_dirs(self.config.package_roots_dir)]
        for missing in self.watcher.watch(dirs):
            logging.getLogger(events.LOGGER_NAME).info(
                "%s does not exist yet; watching for it to appear", missing
            )

    def sync(self, why: str) -> None:
        """Run one sync. Failures leave the previous trust in place and schedule a retry."""
        self.dirty_since = None
        busy = self.watcher.busy_paths(BUSY_MAX_AGE)
        try:
            self.last_result = self.engine.sync(busy=busy)
        except SyncCancelled:
            return  # a stop arrived while files were judged; nothing was applied yet
        except ApplyError as exc:
            self._degrade(str(getattr(exc, "short", None) or exc))
        except EdgeCertdError as exc:  # a lock timeout or similar: same treatment
            self._degrade(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not take trust management down
            # The trust state is whatever the last good sync left; say so and keep retrying.
            events.emit(
                "update_failed",
                f"internal error during sync, previous trust kept: {exc!r}\n{traceback.format_exc()}",
                logging.ERROR,
                reason="internal_error",
            )
            self._degrade(f"internal error ({type(exc).__name__})")
        else:
            failures = self.last_result.target_failures
            if failures:
                # The rest is applied; retry the target that failed, with the same backoff.
                self._degrade("; ".join(f"{f.target} not updated: {f.message}" for f in failures))
            elif self.last_result.judge_unavailable:
                # Held, not refused: judged again with the same backoff (5 s doubling to 5 min).
                self._degrade(
                    f"{len(self.last_result.judge_unavailable)} file(s) held: the judge is unavailable"
                )
            else:
                if self.degraded:
                    events.emit("synced", f"recovered after {why}: trust is up to date again")
                self.degraded, self.retry_at, self.retry_delay = None, None, 0.0
        self._publish()

    def _publish(self) -> None:
        """daemon.json, the metrics, then STATUS=, built once per sync from that sync's result:
        whoever sees the new STATUS= line finds the files that go with it already written."""
        self.status_now = self._status_line()
        self._record_daemon("degraded" if self.degraded else "running")
        self.notifier.status(self.status_now)

    # -- what a request may ask of the loop (requests.Host) ------------------------------

    @property
    def stopping(self) -> bool:
        return "stop" in self.requests

    def adopt(self, result: SyncResult) -> None:
        self.last_result = result
        if not result.target_failures and self.degraded:
            self.degraded, self.retry_at, self.retry_delay = None, None, 0.0
        self._publish()

    def fail(self, reason: str) -> None:
        self._degrade(reason)
        self._publish()

    def _degrade(self, reason: str) -> None:
        initial = min(self.config.watch.retry_initial_seconds, self.config.watch.retry_max_seconds)
        self.retry_delay = min(self.retry_delay * 2 or initial, self.config.watch.retry_max_seconds)
        self.retry_at = time.monotonic() + self.retry_delay
        self.degraded = f"{reason}, retry in {self.retry_delay:.0f} s"

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.notifier.watchdog_interval and now - self._last_ping >= 1.0:
            self._last_ping = now
            self.notifier.watchdog()

    def _poll_while_judging(self) -> None:
        """Called a few times a second while the worker judges a file: keep the watchdog
        fed, and give up the sync at once when asked to stop (nothing is applied yet)."""
        self._heartbeat()
        if self.stopping:
            raise SyncCancelled

    def reload(self) -> str | None:
        """Re-read the configuration; keep the running one if the new one is refused.
        Returns why it was refused (for `edge-certd reload`), or None."""
        refused: str | None = None
        self.notifier.reloading()
        try:
            config, _ = load_config(self.config_path)
        except ConfigError as exc:
            refused = f"the new configuration is refused; edge-certd keeps running the previous one: {exc}"
            events.emit(
                "config",
                f"reload refused, keeping the running configuration: {exc}",
                logging.ERROR,
                reason="config_invalid",
            )
            more = f" and {len(exc.problems) - 1} more" if len(exc.problems) > 1 else ""
            self.config_problem = (
                f"configuration refused at reload ({exc.problems[0]}{more}), running the previous one"
            )
        else:
            self.config_problem = None
            self.config = config
            if self.control is not None:  # who may ask follows the configuration
                follow_config(self.control, config)
            self.engine = Engine(config, heartbeat=self._heartbeat, worker=self.worker)
            self.gateway = GatewayWatch(config)
            events.emit("config", "configuration reloaded")
        self._start_watching()
        self._watch_gateway()
        self.sync("reload")
        self.notifier.ready(self.status_now)
        return refused

    def _stop(self) -> int:
        self.notifier.stopping()
        self._record_daemon("stopped")
        return 0

    def _check_expiry(self) -> None:
        """The expiry warnings (see expiry.py), then daemon.json and the metrics."""
        now = self.expiry_checked = dt.datetime.now(dt.UTC)
        self.expiry.check(self.config, now)
        self._record_daemon("degraded" if self.degraded else "running")  # and the metrics

    def _status_line(self) -> str:
        problems = "; ".join(p for p in (self.degraded, self.config_problem) if p)
        now = dt.datetime.now(dt.UTC)
        line = status_line(
            self.last_result,
            warn_days=self.config.expiry.warn_days,
            now=now,
            problem=problems or None,
        )
        gateway = self.gateway.status(now)
        return f"{line} · {gateway}" if gateway else line

    def _clock_step_news(self, now: float) -> bool:
        """Whether a clock step is worth acting on: the first, then one a minute at most."""
        if self._clock_said_at is not None and now - self._clock_said_at < CLOCK_STEP_QUIET:
            return False
        self._clock_said_at = now
        return True

    def _refresh_status(self) -> None:
        """STATUS= again when only its clock-bound words changed (a probe's age)."""
        line = self._status_line()
        if line != self.status_now:
            self.status_now = line
            self.notifier.status(line)

    def _watch_gateway(self, *, plan: bool = True) -> None:
        """The probe's plan (at start and reload), and a watch on its result directory."""
        if not self.gateway.enabled:
            self.probe_watcher.watch([])
            return
        if plan:
            self.gateway.write_plan()
        self.probe_watcher.watch([self.gateway.result_dir])
        self.gateway.refresh(dt.datetime.now(dt.UTC))

    def _record_daemon(self, state: str) -> None:
        """daemon.json and edge-certd.prom (see record.py); only the daemon writes daemon.json."""
        record_daemon(
            self.config,
            state=state,
            status_line=self.status_now,
            degraded=self.degraded,
            expiry_checked=self.expiry_checked,
            gateway=self.gateway,
            result=metrics.newest(self.engine.last_result, self.last_result),
        )


def run_daemon(config_path: str | None) -> int:
    """Entry point for `edge-certd run`. Returns the exit code."""
    events.setup_logging(to_journal=events.running_under_systemd() and events.journal_available())
    daemon = Daemon(config_path)
    return daemon.run()
