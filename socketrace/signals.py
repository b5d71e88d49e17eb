"""SIGINT, SIGTERM and SIGHUP, handled from the first instruction to the last.

Until tracing starts, a signal raises :class:`StopRequested` wherever Python
is (importing, discovering, compiling, attaching); it is a BaseException,
like KeyboardInterrupt, so no ``except Exception`` (BCC's or ours) can swallow
it, and everything attached is detached as it unwinds. The run then ends with
128 + the signal's number. From the start of tracing to the exit, and while
detaching, signals are deferred: remembered, never raised, so one that arrives
inside a ring-buffer callback cannot be lost there, a second Ctrl+C cannot
abandon a detach halfway, and a run that traced ends with status 0. A write
of events blocked by a reader that stopped reading is the one thing a stop
cuts short: :func:`bounded_write` gives it a second, then abandons it. The
tracing loop asks :func:`requested` after every poll (a signal cuts a
ring-buffer poll short; a --summary tick ends within its 100 ms sleep).

This module imports nothing heavy: the entry point installs the handlers
before importing the rest of socketrace.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = [
    "OutputStalled",
    "StopRequested",
    "bounded_write",
    "defer_from_now",
    "deferred",
    "ignore_from_now",
    "install",
    "requested",
]

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Once a stop is asked for, a write of events gets this long to complete (a pipe whose reader
# stopped reading would block it for ever), then it is abandoned.
WRITE_GRACE_S = 1.0


class OutputStalled(Exception):
    """A write of events did not complete within WRITE_GRACE_S of a stop request."""


class StopRequested(BaseException):
    """A signal asked socketrace to stop before tracing started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """As shells report a death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


_deferring = False
_pending: int | None = None
_writing = False  # inside bounded_write()
_timer_armed = False


def _handler(signum: int, _frame: object) -> None:
    global _pending, _deferring
    if _deferring:
        _pending = _pending or signum
        if _writing:
            _arm_write_timer()
        return
    _deferring = True  # a second signal must not raise again inside the clean-up this one starts
    raise StopRequested(signum)


def _on_write_timer(_signum: int, _frame: object) -> None:
    if _writing:
        raise OutputStalled


def _arm_write_timer() -> None:
    global _timer_armed
    if not _timer_armed:
        signal.signal(signal.SIGALRM, _on_write_timer)
        signal.setitimer(signal.ITIMER_REAL, WRITE_GRACE_S)
        _timer_armed = True


@contextlib.contextmanager
def bounded_write() -> Iterator[None]:
    """A write that may block: once a stop is requested (before or during it), it gets
    WRITE_GRACE_S to complete, then OutputStalled is raised inside it."""
    global _writing, _timer_armed
    _writing = True
    try:
        if _pending is not None:
            _arm_write_timer()
        yield
    finally:
        _writing = False
        if _timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _timer_armed = False


def install() -> None:
    """Handle the signals from now on, even where SIGINT was ignored at start (a background
    job of a non-interactive shell), as `kill -INT` users expect."""
    for signum in HANDLED:
        signal.signal(signum, _handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, signals are remembered for :func:`requested` instead of raised."""
    global _deferring
    previous = _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = previous


def defer_from_now() -> None:
    """Tracing has started: from here to the exit, a signal only asks the run to stop (status 0)."""
    global _deferring
    _deferring = True


def ignore_from_now() -> None:
    """For the last instructions (reporting, exiting, BCC's atexit clean-up): a late signal must
    neither raise in an atexit handler nor kill the process. Python resets its handlers to the
    default action when it finalizes, except SIG_IGN, so ignoring is what lasts to the end."""
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)


def requested() -> int | None:
    """The signal that asked to stop while deferred, if any."""
    return _pending
