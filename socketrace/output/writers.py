"""Where formatted events go: whole lines, one write and one flush per batch.

Both writers take batches of raw records and a periodic ``tick``; ``finish``
ends the run (the summary prints its last period there). The line writer
keeps the line limit and counts what it did not print. When the reader of a
pipe goes away (``| head``), or stops reading while a stop is asked for,
writing stops quietly; any other failure (a full disk) stops it with a
RunError naming the output. Either way the sink is pointed at /dev/null, so
closing it at exit cannot fail a second time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO

from .. import signals
from ..errors import RunError, describe
from ..events import SummarySnapshot
from .summary import SummaryRenderer

__all__ = ["LineWriter", "SummaryWriter"]


class _Output:
    """A text sink that fails once, cleanly."""

    def __init__(self, sink: TextIO) -> None:
        self._sink = sink
        self.closed = False  # the output failed or went away: nothing more is written

    def _emit(self, text: str) -> bool:
        """Write and flush; False once the output is gone."""
        if self.closed:
            return False
        try:
            with signals.bounded_write():
                self._sink.write(text)
                self._sink.flush()
            return True
        except signals.OutputStalled:
            self._close()
            return False
        except OSError as err:
            self._close()
            if isinstance(err, BrokenPipeError):
                return False
            name = getattr(self._sink, "name", "the output")
            raise RunError(f"writing events to {name}: {describe(err)}") from err

    def _close(self) -> None:
        """Nothing more is written; what the sink still buffers goes to /dev/null."""
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._sink.fileno())
        os.close(devnull)


class LineWriter(_Output):
    """One line (or indented block, with stacks) per event: the table or JSON lines."""

    def __init__(
        self, format_batch: Callable[[list[bytes]], str], sink: TextIO, header: str | None, limit: int = 0
    ) -> None:
        super().__init__(sink)
        self._format_batch = format_batch
        self._header = header
        self._limit = limit
        self.written = 0  # events written
        self.unprinted = 0  # events taken but not written: past the limit, or after the output went away

    @property
    def done(self) -> bool:
        """Nothing more will be written: the limit is reached or the output is gone."""
        return self.closed or bool(self._limit and self.written >= self._limit)

    def start(self) -> None:
        if self._header is not None:
            self._emit(self._header + "\n")

    def write(self, records: list[bytes]) -> None:
        room = 0 if self.done else len(records)
        if self._limit:
            room = min(room, self._limit - self.written)
        self.unprinted += len(records) - room
        if room and not self._emit(self._format_batch(records[:room])):
            self.unprinted += room
            return
        self.written += room

    def tick(self) -> None:
        """Lines need no timer."""

    def finish(self) -> None:
        """Every line is already out."""


class SummaryWriter(_Output):
    """Prints the kernel's counts every ``interval`` seconds (0: at the end only)."""

    def __init__(
        self,
        read_snapshot: Callable[[], SummarySnapshot],
        read_events: Callable[[], int],
        renderer: SummaryRenderer,
        sink: TextIO,
        interval: float,
    ) -> None:
        super().__init__(sink)
        self._read_snapshot = read_snapshot
        self._read_events = read_events
        self._renderer = renderer
        self._interval = interval
        self._period_start = time.monotonic()
        self._before = SummarySnapshot({}, {}, {})
        self._events_before = 0
        self.written = 0  # events counted, as of the last table
        self.unprinted = 0

    @property
    def done(self) -> bool:
        return self.closed

    def start(self) -> None:
        self._period_start = time.monotonic()

    def write(self, records: list[bytes]) -> None:
        """The program counts in its maps; no records come."""

    def tick(self) -> None:
        if self._interval and time.monotonic() - self._period_start >= self._interval:
            self._emit_period()

    def finish(self) -> None:
        self._emit_period()

    def _emit_period(self) -> None:
        now_time = time.monotonic()
        snapshot, events = self._read_snapshot(), self._read_events()
        seconds = now_time - self._period_start
        self._emit(self._renderer.render(snapshot, self._before, events - self._events_before, seconds))
        self._before, self._events_before, self._period_start = snapshot, events, now_time
        self.written = events
