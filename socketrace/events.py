"""What comes back from the kernel: event records, the per-CPU counters, the summary maps.

The reader takes at most ``batch`` records per poll, so the caller writes
them out before taking more: output keeps flowing while a load lasts, and
the reader's memory stays bounded (one batch of records; with a perf buffer,
its per-CPU rings' worth) however fast the kernel produces. On a ring buffer
it uses libbpf's consumer (through libbcc, which BCC itself uses): a callback
that returns a negative value stops the consumer after the record it was
given, with the consumer position already past it. Records that never fit
are counted by the program, per cause (see contract.Counter), and read back
here.
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .contract import CONTROL_STOPPED, CONTROL_TRACING, EVENT_SIZE, Counter, Event, MapName

if TYPE_CHECKING:
    from bcc import BPF

__all__ = [
    "EventReader",
    "ProbeCount",
    "SockCount",
    "SummarySnapshot",
    "TaskCount",
    "read_counters",
    "read_summary",
    "set_tracing",
    "stack_of",
]

BATCH = 1024  # records per poll: a few ms of formatting, then the lines are written
PERF_BUFFER_PAGES = 64  # per CPU, for kernels without ring buffers (before 5.8)
_STACK_BYTES = struct.Struct("=i")


def stack_of(raw: bytes) -> tuple[int, ...]:
    """The kernel stack addresses after the event, if the program took them."""
    if len(raw) <= EVENT_SIZE:
        return ()
    (stack_bytes,) = _STACK_BYTES.unpack_from(raw, Event.stack_bytes.offset)
    count = max(0, min(stack_bytes, len(raw) - EVENT_SIZE)) // 8
    return struct.unpack_from(f"={count}Q", raw, EVENT_SIZE) if count else ()


class EventReader:
    """Raw records from the program's ring buffer (or perf buffer), a bounded batch per poll."""

    def __init__(self, bpf: BPF, use_perf_buffer: bool, batch: int = BATCH) -> None:
        self._bpf = bpf
        self._batch = batch
        self._room = batch
        self._pending: list[bytes] = []
        self._manager = None
        self.taken = 0  # records handed out: what the program sent, less what is still in the buffer
        if use_perf_buffer:
            bpf[MapName.EVENTS.encode()].open_perf_buffer(
                self._on_perf_record, page_cnt=PERF_BUFFER_PAGES, lost_cb=self._on_lost
            )
        else:
            self._open_ring_buffer(bpf)

    def _open_ring_buffer(self, bpf: BPF) -> None:
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        append = self._pending.append
        string_at = ctypes.string_at

        def on_record(_ctx: object, data: int, size: int) -> int:
            append(string_at(data, size))
            self._room -= 1
            return 0 if self._room > 0 else -1  # negative: libbpf stops after this record

        self._lib = lib
        self._callback = _RINGBUF_CB_TYPE(on_record)  # referenced as long as libbpf may call it
        self._manager = lib.bpf_new_ringbuf(bpf[MapName.EVENTS.encode()].map_fd, self._callback, None)
        if not self._manager:
            raise OSError(ctypes.get_errno(), "cannot open the ring buffer")

    def _on_perf_record(self, _cpu: int, data: int, size: int) -> None:
        self._pending.append(ctypes.string_at(data, size))

    def _on_lost(self, _count: int) -> None:
        """The program counts what the perf buffer refused; BCC would print a warning of its own."""

    def _take(self) -> list[bytes]:
        records = self._pending[:]
        self._pending.clear()
        self.taken += len(records)
        return records

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for records: at most one batch from a ring buffer; from a perf
        buffer whatever its per-CPU rings hold (PERF_BUFFER_PAGES each), which bounds it too."""
        self._room = self._batch
        if self._manager is None:
            self._bpf.perf_buffer_poll(timeout_ms)
            return self._take()
        self._lib.bpf_poll_ringbuf(self._manager, timeout_ms)
        if not self._pending:
            # The program wakes the reader once per WAKEUP_EVERY events: take what is below that.
            self._lib.bpf_consume_ringbuf(self._manager)
        return self._take()

    def drain(self, seconds: float) -> Iterator[list[bytes]]:
        """What is still in the buffer, a batch at a time (the program has stopped emitting), for at
        most ``seconds`` of the caller's time: a stop under a flood must not wait for a full buffer to
        be formatted. What is left then is the program's EMITTED count less ``taken``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._room = self._batch
            if self._manager is None:
                self._bpf.perf_buffer_poll(0)
            else:
                self._lib.bpf_consume_ringbuf(self._manager)
            records = self._take()
            if not records:
                return
            yield records

    def close(self) -> None:
        if self._manager is not None:
            self._lib.bpf_free_ringbuf(self._manager)
            self._manager = None


def set_tracing(bpf: BPF, tracing: bool) -> None:
    """Let events flow (once everything is attached), or stop them (at the end)."""
    bpf[MapName.CONTROL.encode()][ctypes.c_int(0)] = ctypes.c_uint32(CONTROL_TRACING if tracing else CONTROL_STOPPED)


def read_counters(bpf: BPF) -> dict[Counter, int]:
    """The program's counters, summed over CPUs."""
    per_cpu = bpf[MapName.CPU_STATES.encode()][ctypes.c_int(0)]
    return {counter: sum(state.counters[counter] for state in per_cpu) for counter in Counter}


@dataclass(frozen=True)
class ProbeCount:
    count: int
    total_ns: int
    max_ns: int
    latency: tuple[int, ...]  # calls by log2(duration in ns)


@dataclass(frozen=True)
class SockCount:
    count: int
    netns: int
    family: int
    protocol: int
    saddr: bytes
    sport: int
    daddr: bytes
    dport: int


@dataclass(frozen=True)
class TaskCount:
    count: int
    comm: str


@dataclass(frozen=True)
class SummarySnapshot:
    """The --summary maps at one moment: counts since the start, keyed as the program keys them
    (probe id, or function address for classic kprobes; sock address; thread group id)."""

    probes: dict[int, ProbeCount]
    socks: dict[int, SockCount]
    tasks: dict[int, TaskCount]


def _total(value: object) -> int:
    """A u64 map value summed over CPUs, whatever ctypes type BCC gave it (a number, an array of
    per-CPU numbers, or raw bytes, depending on BCC's version and the typedef)."""
    data = b"".join(bytes(item) for item in value) if isinstance(value, list) else bytes(value)  # type: ignore[call-overload]
    return sum(struct.unpack(f"={len(data) // 8}Q", data))


def read_summary(bpf: BPF, with_latency: bool) -> SummarySnapshot:
    """Read the --summary maps (cumulative counts; the LRU ones forget their least recent rows);
    ``with_latency`` (--output-return) the latencies too."""
    counts = {key.value: _total(value) for key, value in bpf[MapName.SUMMARY_COUNTS.encode()].items()}
    latency = {key.value: row for key, row in bpf[MapName.SUMMARY_LATENCY.encode()].items()} if with_latency else {}
    probes = {}
    for key, count in counts.items():
        if count:
            row = latency.get(key)
            spread = (row.total_ns, row.max_ns, tuple(row.buckets)) if row is not None else (0, 0, ())
            probes[key] = ProbeCount(count, *spread)
    socks = {
        key.value: SockCount(
            value.count,
            value.netns,
            value.family,
            value.protocol,
            bytes(value.saddr),
            value.sport,
            bytes(value.daddr),
            value.dport,
        )
        for key, value in bpf[MapName.SUMMARY_SOCKS.encode()].items()
    }
    tasks = {
        key.value: TaskCount(value.count, value.comm.decode(errors="replace"))
        for key, value in bpf[MapName.SUMMARY_TASKS.encode()].items()
    }
    return SummarySnapshot(probes, socks, tasks)
