"""SIGINT, SIGTERM and SIGHUP, handled from the first instruction to the last.

Until tracing starts, a signal raises :class:`StopRequested` wherever Python
is (importing, discovering, compiling, attaching); it is a BaseException,
like KeyboardInterrupt, so no ``except Exception`` (BCC's or ours) can swallow
it, and everything attached is detached as it unwinds. The run then ends with
128 + the signal's number. From the start of tracing to the exit, and while
detaching, signals are deferred: remembered, never raised, so one that arrives
inside a ring-buffer callback cannot be lost there, a second Ctrl+C cannot
abandon a detach halfway, and a run that traced ends with status 0. The
tracing loop asks :func:`requested` after every poll (a signal cuts a
ring-buffer poll short; a --summary tick ends within its 100 ms sleep).

This module imports nothing heavy: the entry point installs the handlers
before importing the rest of socketrace.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["StopRequested", "defer_from_now", "deferred", "ignore_from_now", "install", "requested"]

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def _handler(signum: int, _frame: object) -> None:
    global _pending, _deferring
    if _deferring:
        _pending = _pending or signum
        return
    _deferring = True  # a second signal must not raise again inside the clean-up this one starts
    raise StopRequested(signum)


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
