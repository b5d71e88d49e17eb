"""Where formatted events go: whole lines, one write and one flush per batch.

Both writers take batches of records and a periodic ``tick``; ``finish`` ends
the run (the summary prints its last period there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from ..events import Record
from .summary import Summary

__all__ = ["LineWriter", "SummaryWriter"]


class LineWriter:
    """One line (or indented block, with stacks) per event: the table or JSON lines."""

    def __init__(self, format_record: Callable[[Record], str], sink: TextIO, header: str | None) -> None:
        self._format = format_record
        self._sink = sink
        self._header = header

    def start(self) -> None:
        if self._header is not None:
            self._sink.write(self._header + "\n")
            self._sink.flush()

    def write(self, records: list[Record]) -> None:
        if records:
            self._sink.write("".join(self._format(record) + "\n" for record in records))
            self._sink.flush()

    def tick(self) -> None:
        """Lines need no timer."""

    def finish(self) -> None:
        """Every line is already out."""


class SummaryWriter:
    """Aggregates, and prints the summary every ``interval`` seconds (0: at the end only)."""

    def __init__(self, summary: Summary, sink: TextIO, interval: float) -> None:
        self._summary = summary
        self._sink = sink
        self._interval = interval
        self._period_start = time.monotonic()

    def start(self) -> None:
        self._period_start = time.monotonic()

    def write(self, records: list[Record]) -> None:
        for record in records:
            self._summary.add(record)

    def tick(self) -> None:
        if self._interval and time.monotonic() - self._period_start >= self._interval:
            self._emit()

    def finish(self) -> None:
        self._emit()

    def _emit(self) -> None:
        now = time.monotonic()
        self._sink.write(self._summary.render(now - self._period_start))
        self._sink.flush()
        self._period_start = now
