"""``--summary``: counts per function, per socket and per process, counted in the kernel.

The program keeps cumulative counts in maps (see events.read_summary); each
period's table is the difference between two snapshots. The socket and
process maps are LRU tables (8,192 sockets, 4,096 processes): under a flood
of new sockets the least recently seen are forgotten, and a forgotten socket
seen again starts from zero. Latency maxima are since the start.
"""

from __future__ import annotations

from ..contract import NO_PROBE_ID
from ..events import SummarySnapshot
from ..symbols import ProbeTable, family_name, protocol_name
from .text import endpoints

__all__ = ["SummaryRenderer"]

HISTOGRAMS = 3  # functions whose latency histogram is drawn, by total time
BAR_WIDTH = 40


def _delta(now: int, before: int | None) -> int:
    """Growth since the previous snapshot; a row the LRU forgot and re-added starts over."""
    return now - before if before is not None and now >= before else now


class SummaryRenderer:
    """Tables of the counts between two snapshots of the program's summary maps."""

    def __init__(self, probes: ProbeTable, top: int) -> None:
        self._probes = probes
        self._top = top

    def _function(self, key: int) -> str:
        """Rows are keyed by probe id, or by function address for classic kprobes."""
        return self._probes.name_of(key) if key < NO_PROBE_ID else self._probes.name_of(NO_PROBE_ID, key)

    def render(self, now: SummarySnapshot, before: SummarySnapshot, events: int, seconds: float) -> str:
        """Three tables (four with latencies) for the period between the snapshots."""
        functions = {
            self._function(key): _delta(row.count, getattr(before.probes.get(key), "count", None))
            for key, row in now.probes.items()
        }
        sockets = {}
        for sk, row in now.socks.items():
            tuple_text = endpoints(row.family, row.saddr, row.sport, row.daddr, row.dport)
            family = f"{family_name(row.family)} {protocol_name(row.family, row.protocol)}"
            label = f"0x{sk:x} {tuple_text} {family}" if tuple_text else f"0x{sk:x} {family}"
            sockets[label] = _delta(row.count, getattr(before.socks.get(sk), "count", None))
        processes = {
            f"{tgid}({row.comm})": _delta(row.count, getattr(before.tasks.get(tgid), "count", None))
            for tgid, row in now.tasks.items()
        }
        lines = [f"=== {events} events in {seconds:.1f} s ==="]
        lines += _table("FUNCTION", _top(functions, self._top))
        lines += _table("SOCKET", _top(sockets, self._top))
        lines += _table("PROCESS", _top(processes, self._top))
        lines += self._latencies(now, before)
        return "\n".join(lines) + "\n"

    def _latencies(self, now: SummarySnapshot, before: SummarySnapshot) -> list[str]:
        periods = []
        for key, row in now.probes.items():
            previous = before.probes.get(key)
            calls = sum(row.latency) - (sum(previous.latency) if previous else 0)
            if calls > 0:
                total = row.total_ns - (previous.total_ns if previous else 0)
                buckets = [n - (previous.latency[i] if previous else 0) for i, n in enumerate(row.latency)]
                periods.append((self._function(key), calls, total, row, buckets))
        if not periods:
            return []
        periods.sort(key=lambda item: -item[2])
        rows = [
            (f"{name} avg {total / calls / 1000:.1f}us max {row.max_ns / 1000:.1f}us", calls)
            for name, calls, total, row, _ in periods[: self._top]
        ]
        lines = _table("LATENCY (by total time)", rows)
        for name, _, _, _, buckets in periods[:HISTOGRAMS]:
            lines += ["", f"{name} (ns):", *_histogram(buckets)]
        return lines


def _top(counts: dict[str, int], top: int) -> list[tuple[str, int]]:
    rows = [(label, count) for label, count in counts.items() if count > 0]
    return sorted(rows, key=lambda row: (-row[1], row[0]))[:top]


def _table(title: str, rows: list[tuple[str, int]]) -> list[str]:
    width = max([len(title), *(len(label) for label, _ in rows)])
    return ["", f"{title:<{width}}  COUNT", *(f"{label:<{width}}  {count}" for label, count in rows)]


def _scaled(value: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size:
            return f"{value // size}{unit}"
    return str(value)


def _histogram(buckets: list[int]) -> list[str]:
    """bpftrace's hist() layout: one line per power of two, from the first bucket used to the last."""
    used = [index for index, count in enumerate(buckets) if count]
    peak = max(buckets)
    lines = []
    for index in range(used[0], used[-1] + 1):
        low, high = (1 << index if index else 0), 1 << (index + 1)
        bar = "@" * (buckets[index] * BAR_WIDTH // peak)
        label = f"[{_scaled(low)}, {_scaled(high)})"
        lines.append(f"{label:<16} {buckets[index]:>8} |{bar:<{BAR_WIDTH}}|")
    return lines
