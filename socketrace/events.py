"""Events from the kernel: the ctypes mirror of ``bpf/socketrace.h`` and the reader.

The reader drains the ring buffer (or the perf buffer on kernels before 5.8)
into a list of raw records and decodes them in batches, so the BCC callback
stays as short as possible. Losses are counted in the kernel (a per-CPU
counter bumped when an output fails) and read back here.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .symbols import AF_INET, AF_INET6

if TYPE_CHECKING:
    from bcc import BPF

__all__ = [
    "EVENT_SIZE",
    "Event",
    "EventReader",
    "LossCounters",
    "decode_record",
]

EVENT_SIZE = 296  # EVENT_SIZE in bpf/socketrace.h
UNIX_PATH_MAX = 108
EVENT_HAS_SOCKET = 1
EVENT_RETURN = 2
COUNTER_DROPPED = 0
COUNTER_STACK_ERRORS = 1
COUNTER_CALLS_LOST = 2
PERF_BUFFER_PAGES = 256  # per CPU


class UnixDetail(ctypes.Structure):
    _fields_ = [("peer", ctypes.c_uint64), ("path_len", ctypes.c_int32), ("path", ctypes.c_char * UNIX_PATH_MAX)]


class NetlinkDetail(ctypes.Structure):
    _fields_ = [("portid", ctypes.c_uint32), ("dst_portid", ctypes.c_uint32), ("groups", ctypes.c_uint64)]


class PacketDetail(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_int32)]


class Detail(ctypes.Union):
    _fields_ = [("unix_sk", UnixDetail), ("netlink", NetlinkDetail), ("packet", PacketDetail)]


class Event(ctypes.Structure):
    """``struct event`` of bpf/socketrace.h, field for field."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("sk", ctypes.c_uint64),
        ("func_ip", ctypes.c_uint64),
        ("socket_flags", ctypes.c_uint64),
        ("socket_ino", ctypes.c_uint64),
        ("retval", ctypes.c_int64),
        ("duration_ns", ctypes.c_uint64),
        ("probe_id", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("bound_dev_if", ctypes.c_int32),
        ("rx_dst_ifindex", ctypes.c_int32),
        ("backlog_len", ctypes.c_int32),
        ("rcvbuf", ctypes.c_int32),
        ("sndbuf", ctypes.c_int32),
        ("socket_state", ctypes.c_int32),
        ("stack_bytes", ctypes.c_int32),
        ("family", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("type", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("socket_type", ctypes.c_int16),
        ("state", ctypes.c_uint8),
        ("reuseport", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
        ("detail", Detail),
    ]

    @property
    def has_socket(self) -> bool:
        return bool(self.flags & EVENT_HAS_SOCKET)

    def addresses(self) -> tuple[str, str] | None:
        """(local, remote) addresses as text for AF_INET and AF_INET6, else None."""
        if self.family == AF_INET:
            return socket.inet_ntop(socket.AF_INET, bytes(self.saddr)[:4]), socket.inet_ntop(
                socket.AF_INET, bytes(self.daddr)[:4]
            )
        if self.family == AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, bytes(self.saddr)), socket.inet_ntop(
                socket.AF_INET6, bytes(self.daddr)
            )
        return None

    @property
    def is_return(self) -> bool:
        return bool(self.flags & EVENT_RETURN)

    @property
    def unix_path(self) -> str:
        """The bound path, ``@name`` for an abstract one, empty when unnamed."""
        detail = self.detail.unix_sk
        raw = ctypes.string_at(ctypes.addressof(detail) + UnixDetail.path.offset, max(0, detail.path_len))
        if raw.startswith(b"\0"):
            return "@" + raw[1:].decode(errors="replace")
        return raw.split(b"\0", 1)[0].decode(errors="replace")


assert ctypes.sizeof(Event) == EVENT_SIZE, "Event no longer matches bpf/socketrace.h"


@dataclass(frozen=True)
class Record:
    """One decoded record: the event and the kernel stack that followed it."""

    event: Event
    stack: tuple[int, ...]


def decode_record(raw: bytes) -> Record:
    """Split a raw record into its event and (with --output-stack) stack addresses."""
    event = Event.from_buffer_copy(raw, 0)
    stack: tuple[int, ...] = ()
    if event.stack_bytes > 0 and len(raw) > EVENT_SIZE:
        count = min(event.stack_bytes, len(raw) - EVENT_SIZE) // 8
        stack = tuple((ctypes.c_uint64 * count).from_buffer_copy(raw, EVENT_SIZE))
    return Record(event, stack)


@dataclass(frozen=True)
class LossCounters:
    """What the kernel could not deliver, summed over CPUs."""

    dropped: int
    stack_errors: int
    calls_lost: int  # --output-return: calls whose entry could not be remembered


class EventReader:
    """Collects raw records from the kernel buffer; decodes them per poll."""

    def __init__(self, bpf: BPF, use_perf_buffer: bool) -> None:
        self._bpf = bpf
        self._pending: list[bytes] = []
        self._use_perf_buffer = use_perf_buffer
        if use_perf_buffer:
            bpf["events"].open_perf_buffer(self._on_perf_record, page_cnt=PERF_BUFFER_PAGES)
        else:
            bpf["events"].open_ring_buffer(self._on_ring_record)

    def _on_ring_record(self, _ctx: object, data: int, size: int) -> int:
        self._pending.append(ctypes.string_at(data, size))
        return 0

    def _on_perf_record(self, _cpu: int, data: int, size: int) -> None:
        self._pending.append(ctypes.string_at(data, size))

    def poll(self, timeout_ms: int) -> list[Record]:
        """Wait up to timeout_ms for records and decode everything that arrived."""
        if self._use_perf_buffer:
            self._bpf.perf_buffer_poll(timeout_ms)
        else:
            self._bpf.ring_buffer_poll(timeout_ms)
        raw, self._pending = self._pending, []
        return [decode_record(record) for record in raw]

    def losses(self) -> LossCounters:
        counters = self._bpf["counters"]
        indexes = (COUNTER_DROPPED, COUNTER_STACK_ERRORS, COUNTER_CALLS_LOST)
        totals = [sum(counters[ctypes.c_int(index)]) for index in indexes]
        return LossCounters(*totals)
