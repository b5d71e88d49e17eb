"""``--summary``: counts per function, per socket and per process instead of one line per event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ..events import Record
from ..symbols import family_name, protocol_name
from .text import format_tuple

__all__ = ["Summary"]


class Summary:
    """Aggregates records; ``render`` prints the top rows and starts a new period."""

    def __init__(self, name_of: Callable[[int, int], str], top: int) -> None:
        self._name_of = name_of
        self._top = top
        self._reset()

    def _reset(self) -> None:
        self.total = 0
        self.functions: Counter[str] = Counter()
        self.sockets: Counter[int] = Counter()
        self.processes: Counter[str] = Counter()
        self.latency: dict[str, list[int]] = {}  # function -> [calls, total ns, max ns]
        self._socket_labels: dict[int, str] = {}

    def add(self, record: Record) -> None:
        event = record.event
        self.total += 1
        func = self._name_of(event.probe_id, event.func_ip)
        self.functions[func] += 1
        if event.is_return:
            calls = self.latency.setdefault(func, [0, 0, 0])
            calls[0] += 1
            calls[1] += event.duration_ns
            calls[2] = max(calls[2], event.duration_ns)
        self.sockets[event.sk] += 1
        self.processes[f"{event.tgid}({event.comm.decode(errors='replace')})"] += 1
        # The latest tuple: a socket gets its ports and addresses as it goes.
        endpoints = format_tuple(event)
        family = f"{family_name(event.family)} {protocol_name(event.family, event.protocol)}"
        self._socket_labels[event.sk] = f"{endpoints} {family}" if endpoints else family

    def render(self, seconds: float) -> str:
        """Three tables for the period just ended, then a fresh period."""
        lines = [f"=== {self.total} events in {seconds:.1f} s ==="]
        lines += _table("FUNCTION", self.functions.most_common(self._top))
        sockets = [(f"0x{sk:x} {self._socket_labels[sk]}", count) for sk, count in self.sockets.most_common(self._top)]
        lines += _table("SOCKET", sockets)
        lines += _table("PROCESS", self.processes.most_common(self._top))
        if self.latency:
            slowest = sorted(self.latency.items(), key=lambda item: -item[1][1])[: self._top]
            rows = [
                (f"{func} avg {total / calls / 1000:.1f}us max {peak / 1000:.1f}us", calls)
                for func, (calls, total, peak) in slowest
            ]
            lines += _table("LATENCY (by total time)", rows)
        self._reset()
        return "\n".join(lines) + "\n"


def _table(title: str, rows: list[tuple[str, int]]) -> list[str]:
    width = max([len(title), *(len(label) for label, _ in rows)])
    return ["", f"{title:<{width}}  COUNT", *(f"{label:<{width}}  {count}" for label, count in rows)]
