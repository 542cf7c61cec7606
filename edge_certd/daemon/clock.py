"""A file descriptor that becomes readable when the wall clock is set (timerfd_create(2)
with TFD_TIMER_CANCEL_ON_SET). A board without an RTC boots in 1970 or at its last
shutdown, and NTP steps the clock later; roots judged "not yet valid" before that step
must be judged again at once, not at the next rescan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME = 1
_TFD_TIMER_CANCEL_ON_SET = 2
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
# Armed far in the future: it never fires, it only gets cancelled by a clock step.
_FAR_FUTURE = 2**62


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class ClockWatch:
    """`fd` turns readable when the clock is set; `acknowledge()` re-arms it.

    Without timerfd (not Linux), `fd` is None and clock steps are noticed at the rescan.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        try:
            self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = self._libc.timerfd_create(_CLOCK_REALTIME, _TFD_NONBLOCK | _TFD_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd < 0:
            return
        self.fd = fd
        self._arm()

    def _arm(self) -> None:
        assert self.fd is not None
        spec = _Itimerspec(it_interval=_Timespec(0, 0), it_value=_Timespec(_FAR_FUTURE, 0))
        flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
        if self._libc.timerfd_settime(self.fd, flags, ctypes.byref(spec), None) != 0:
            self.close()

    def acknowledge(self) -> bool:
        """True when the clock was set since the last call; re-arms the watch either way."""
        if self.fd is None:
            return False
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.ECANCELED:
                raise
            self._arm()
            return True
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
