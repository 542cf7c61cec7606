"""`edge-certd run`: the loop, the watcher and sd_notify. May import: sync and below.

- `loop`: the one loop (`Daemon`, `run_daemon`); signal handlers and threads only wake it;
- `requests`: what each control-socket request does once the loop takes it;
- `control`: the control socket's thread, which reads and authorises requests;
- `watcher`: inotify through watchdog, and polling past its limits;
- `clock`: a timerfd that wakes the loop when the clock is set;
- `gateway`: the gateway probe's result, watched and turned into status;
- `expiry`: the expiry warnings and their memory;
- `record`: daemon.json and the metrics file;
- `status`, `startup`: the `STATUS=` line and the start-up line;
- `notify`: sd_notify;
- `stopping`: a stop that reaches a sync while files are judged.
"""
