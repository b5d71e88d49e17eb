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
        self._socket_labels: dict[int, str] = {}

    def add(self, record: Record) -> None:
        event = record.event
        self.total += 1
        self.functions[self._name_of(event.probe_id, event.func_ip)] += 1
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
        self._reset()
        return "\n".join(lines) + "\n"


def _table(title: str, rows: list[tuple[str, int]]) -> list[str]:
    width = max([len(title), *(len(label) for label, _ in rows)])
    return ["", f"{title:<{width}}  COUNT", *(f"{label:<{width}}  {count}" for label, count in rows)]
