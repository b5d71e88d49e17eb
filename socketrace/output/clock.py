"""Event times: the kernel's monotonic nanoseconds as wall clock, since start, or per-socket delta."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..options import Timestamp

__all__ = ["EventClock", "Stamps"]

# Sockets remembered for deltas; past this the least recently seen are forgotten (their next delta is 0).
MAX_SOCKETS = 65_536


@dataclass(frozen=True)
class Stamps:
    wall_ns: int  # since the epoch
    relative_ns: int  # since tracing started
    delta_ns: int  # since the previous event of the same socket; 0 for its first


class EventClock:
    """Stateful: deltas need the previous event of each socket, so call ``stamp`` once per event, in order.

    ``bpf_ktime_get_ns()`` counts CLOCK_MONOTONIC, the clock of ``time.monotonic_ns()``.
    """

    def __init__(self, mode: Timestamp) -> None:
        self.mode = mode
        self.start_ns = time.monotonic_ns()
        self._wall_offset_ns = time.time_ns() - self.start_ns
        self._last_by_sock: dict[int, int] = {}

    def stamp(self, sk: int, ts_ns: int) -> Stamps:
        """The times of an event of socket ``sk`` at ``ts_ns`` (kernel monotonic)."""
        previous = self._last_by_sock.pop(sk, None)  # re-inserted last: the dict stays in recency order
        if len(self._last_by_sock) >= MAX_SOCKETS:
            del self._last_by_sock[next(iter(self._last_by_sock))]
        self._last_by_sock[sk] = ts_ns
        delta = ts_ns - previous if previous is not None else 0
        return Stamps(ts_ns + self._wall_offset_ns, ts_ns - self.start_ns, delta)

    def column(self, stamps: Stamps) -> str:
        """The TIME column of the table, per --timestamp."""
        if self.mode is Timestamp.ABSOLUTE:
            seconds, nanos = divmod(stamps.wall_ns, 1_000_000_000)
            return f"{time.strftime('%H:%M:%S', time.localtime(seconds))}.{nanos // 1000:06d}"
        if self.mode is Timestamp.RELATIVE:
            return f"{stamps.relative_ns / 1e9:.6f}"
        return f"+{stamps.delta_ns / 1e9:.6f}"
