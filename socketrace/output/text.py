"""The original socketrace's table: ``CPU PROCESS FUNC`` then the socket, one line per event.

Formatting works on raw records and is built for throughput: the text of the
task and function (``5   926(sshd)   tcp_sendmsg``) is cached by the record
bytes it comes from, and so is the text of the socket (tuple, namespace,
family, details, identity), so an event of a socket already seen costs two
slices, two dictionary lookups and a concatenation. Both caches are bounded
(MAX_CACHED entries each, then cleared).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ..contract import EVENT_RETURN, SOCK_HAS_SOCKET, SOCKET_PART, WHO_PART, WHO_STRUCT, Event
from ..events import stack_of
from ..options import OutputSpec
from ..symbols import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    IPPROTO_TCP,
    KernelSymbols,
    ProbeTable,
    family_name,
    format_return,
    protocol_name,
    sock_type_name,
    socket_state_name,
    tcp_state_name,
)
from .clock import EventClock

__all__ = ["TIME_WIDTH", "TextFormatter", "addresses", "endpoints", "header", "unix_path"]

CPU_WIDTH = 3
PROCESS_WIDTH = 32
FUNC_WIDTH = 32
TIME_WIDTH = 15
MAX_CACHED = 16_384  # entries per cache (a few MiB): a busy host fits, a flood of new sockets is bounded

_RETURN = struct.Struct("=qQ")  # retval, duration_ns
_FLAGS = Event.flags.offset  # its low byte holds EVENT_RETURN (little-endian machines)
_TS_NS = struct.Struct("=Q")
_SK = struct.Struct("=Q")


def header(with_time: bool = False) -> str:
    columns = f"{'CPU':<{CPU_WIDTH}} {'PROCESS':<{PROCESS_WIDTH}} {'FUNC':<{FUNC_WIDTH}}"
    return f"{'TIME':<{TIME_WIDTH}} {columns}" if with_time else columns


def addresses(family: int, saddr: bytes, daddr: bytes) -> tuple[str, str] | None:
    """(local, remote) addresses as text for AF_INET and AF_INET6, else None."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, saddr[:4]), socket.inet_ntop(socket.AF_INET, daddr[:4])
    if family == AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, saddr), socket.inet_ntop(socket.AF_INET6, daddr)
    return None


def endpoints(family: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> str:
    """``saddr:sport -> daddr:dport``; IPv6 addresses in brackets; empty for other families."""
    pair = addresses(family, saddr, daddr)
    if pair is None:
        return ""
    local, remote = pair
    if family == AF_INET6:
        return f"[{local}]:{sport} -> [{remote}]:{dport}"
    return f"{local}:{sport} -> {remote}:{dport}"


def unix_path(event: Event) -> str:
    """The bound path of a unix socket, ``@name`` for an abstract one, empty when unnamed."""
    detail = event.detail.unix_sk
    # Not detail.path: ctypes cuts a char array at its first NUL, which starts an abstract name.
    raw = ctypes.string_at(ctypes.addressof(detail) + type(detail).path.offset, max(0, detail.path_len))
    if raw.startswith(b"\0"):
        return "@" + raw[1:].decode(errors="replace")
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _detail(event: Event, with_tcp_state: bool) -> str:
    """What only the socket's family has: unix path and peer, netlink ports and groups,
    packet interface, and TCP's state."""
    if event.family == AF_UNIX:
        return f" path={unix_path(event)} peer=0x{event.detail.unix_sk.peer:x}"
    if event.family == AF_NETLINK:
        netlink = event.detail.netlink
        return f" portid={netlink.portid} dst_portid={netlink.dst_portid} groups={netlink.groups:#x}"
    if event.family == AF_PACKET:
        return f" ifindex={event.detail.packet.ifindex}"
    if with_tcp_state and event.family in (AF_INET, AF_INET6) and event.protocol == IPPROTO_TCP:
        return f" state={tcp_state_name(event.state)}"
    return ""


class TextFormatter:
    """Raw records to table lines; ``probes`` names the traced function of each.

    With a clock, each line starts with a TIME column (``--timestamp``).
    """

    def __init__(
        self,
        spec: OutputSpec,
        probes: ProbeTable,
        symbols: KernelSymbols | None = None,
        clock: EventClock | None = None,
    ) -> None:
        self._spec = spec
        self._probes = probes
        self._symbols = symbols if spec.stack else None
        self._clock = clock
        self._who: dict[bytes, str] = {}
        self._sock: dict[bytes, tuple[str, str]] = {}

    def header(self) -> str:
        return header(with_time=self._clock is not None)

    def format(self, raw: bytes) -> str:
        """One event's line (with its stack lines under it, if asked for)."""
        return self.format_batch([raw])[:-1]

    def format_batch(self, records: list[bytes]) -> str:
        """The lines of a batch of records, each ending in a newline."""
        who_cache, sock_cache = self._who, self._sock
        who_start, who_end = WHO_PART
        sock_start, sock_end = SOCKET_PART
        plain = self._clock is None and self._symbols is None
        lines = []
        for raw in records:
            who = who_cache.get(raw[who_start:who_end]) or self._who_text(raw)
            head, tail = sock_cache.get(raw[sock_start:sock_end]) or self._sock_text(raw)
            middle = self._return_text(raw) if raw[_FLAGS] & EVENT_RETURN else ""
            line = who + head + middle + tail
            if not plain:
                line = self._decorate(raw, line)
            lines.append(line)
        lines.append("")
        return "\n".join(lines)

    def _decorate(self, raw: bytes, line: str) -> str:
        """The TIME column before the line, the stack under it."""
        if self._clock is not None:
            (ts_ns,) = _TS_NS.unpack_from(raw, Event.ts_ns.offset)
            (sk,) = _SK.unpack_from(raw, Event.sk.offset)
            line = f"{self._clock.column(self._clock.stamp(sk, ts_ns)):<{TIME_WIDTH}} {line}"
        if self._symbols is not None:
            line += "".join(f"\n    {self._symbols.describe(address)}" for address in stack_of(raw))
        return line

    def _who_text(self, raw: bytes) -> str:
        func_ip, cpu, probe_id, tgid, comm = WHO_STRUCT.unpack_from(raw, WHO_PART[0])
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        process = f"{tgid}({name})"
        func = self._probes.name_of(probe_id, func_ip)
        text = f"{cpu:<{CPU_WIDTH}} {process:<{PROCESS_WIDTH}} {func:<{FUNC_WIDTH}}"
        if len(self._who) >= MAX_CACHED:
            self._who.clear()
        self._who[raw[WHO_PART[0] : WHO_PART[1]]] = text
        return text

    def _return_text(self, raw: bytes) -> str:
        retval, duration_ns = _RETURN.unpack_from(raw, Event.retval.offset)
        (probe_id,) = struct.unpack_from("=I", raw, Event.probe_id.offset)
        return " " + format_return(retval, duration_ns, self._probes.ret_kind_of(probe_id))

    def _sock_text(self, raw: bytes) -> tuple[str, str]:
        """(tuple, namespace, family, protocol) and (details, identity): the return value goes between."""
        event = Event.from_buffer_copy(raw)
        spec = self._spec
        tuple_text = endpoints(event.family, bytes(event.saddr), event.sport, bytes(event.daddr), event.dport)
        head = (
            (f" {tuple_text}" if tuple_text else "")
            + f" netns={event.netns} family={family_name(event.family)}"
            + f" protocol={protocol_name(event.family, event.protocol)}"
        )
        tail = _detail(event, with_tcp_state=not spec.sock_common)
        if spec.sock_common:
            tail += (
                f" state={tcp_state_name(event.state)} reuseport={str(bool(event.reuseport)).lower()}"
                f" bound_ifindex={event.bound_dev_if}"
            )
        if spec.sock_info:
            tail += (
                f" rx_dst_ifindex={event.rx_dst_ifindex} backlog_len={event.backlog_len}"
                f" rcv_buff={event.rcvbuf} snd_buff={event.sndbuf} priority={event.priority}"
                f" mark={event.mark} type={sock_type_name(event.type)}"
            )
        has_socket = bool(event.sock_flags & SOCK_HAS_SOCKET)
        if spec.socket_info:
            tail += (
                f" state={socket_state_name(event.socket_state)} type={sock_type_name(event.socket_type)}"
                f" flags={event.socket_flags:#x} f_ino={event.socket_ino}"
                if has_socket
                else " socket=none"
            )
        # The cookie in hex, as `ss -e` prints it after sk:, so ss's value greps here.
        tail += f" sk=0x{event.sk:x}" + (f" ino={event.socket_ino}" if has_socket else "") + f" cookie={event.cookie:x}"
        if len(self._sock) >= MAX_CACHED:
            self._sock.clear()
        self._sock[raw[SOCKET_PART[0] : SOCKET_PART[1]]] = (head, tail)
        return head, tail
