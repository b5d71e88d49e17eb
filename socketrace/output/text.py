"""The original socketrace's table: ``CPU PROCESS FUNC`` then the socket, one line per event."""

from __future__ import annotations

from collections.abc import Callable

from ..events import Event, Record
from ..options import OutputSpec
from ..symbols import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    IPPROTO_TCP,
    KernelSymbols,
    family_name,
    format_return,
    protocol_name,
    sock_type_name,
    socket_state_name,
    tcp_state_name,
)
from .clock import EventClock

__all__ = ["TextFormatter", "format_detail", "format_tuple", "header"]

CPU_WIDTH = 3
PROCESS_WIDTH = 32
FUNC_WIDTH = 32


TIME_WIDTH = 15


def header(with_time: bool = False) -> str:
    columns = f"{'CPU':<{CPU_WIDTH}} {'PROCESS':<{PROCESS_WIDTH}} {'FUNC':<{FUNC_WIDTH}}"
    return f"{'TIME':<{TIME_WIDTH}} {columns}" if with_time else columns


def format_tuple(event: Event) -> str:
    """``saddr:sport -> daddr:dport``; IPv6 addresses in brackets; empty for other families."""
    addresses = event.addresses()
    if addresses is None:
        return ""
    local, remote = addresses
    if event.family == AF_INET6:
        return f"[{local}]:{event.sport} -> [{remote}]:{event.dport}"
    return f"{local}:{event.sport} -> {remote}:{event.dport}"


def format_detail(event: Event, with_tcp_state: bool = True) -> str:
    """What only the socket's family has: unix path and peer, netlink ports and groups,
    packet interface, and TCP's state."""
    if event.family == AF_UNIX:
        return f"path={event.unix_path} peer=0x{event.detail.unix_sk.peer:x}"
    if event.family == AF_NETLINK:
        netlink = event.detail.netlink
        return f"portid={netlink.portid} dst_portid={netlink.dst_portid} groups={netlink.groups:#x}"
    if event.family == AF_PACKET:
        return f"ifindex={event.detail.packet.ifindex}"
    if with_tcp_state and event.family in (AF_INET, AF_INET6) and event.protocol == IPPROTO_TCP:
        return f"state={tcp_state_name(event.state)}"
    return ""


class TextFormatter:
    """Turns records into lines; ``name_of(probe_id, func_ip)`` names the traced function.

    With a clock, each line starts with a TIME column (``--timestamp``).
    """

    def __init__(
        self,
        spec: OutputSpec,
        name_of: Callable[[int, int], str],
        symbols: KernelSymbols | None = None,
        clock: EventClock | None = None,
    ) -> None:
        self._spec = spec
        self._name_of = name_of
        self._symbols = symbols
        self._clock = clock

    def header(self) -> str:
        return header(with_time=self._clock is not None)

    def format(self, record: Record) -> str:
        event = record.event
        spec = self._spec
        process = f"{event.tgid}({event.comm.decode(errors='replace')})"
        func = self._name_of(event.probe_id, event.func_ip)
        parts = [f"{event.cpu:<{CPU_WIDTH}} {process:<{PROCESS_WIDTH}} {func:<{FUNC_WIDTH}}"]
        if self._clock is not None:
            parts.insert(0, f"{self._clock.column(self._clock.stamp(event)):<{TIME_WIDTH}}")
        endpoints = format_tuple(event)
        if endpoints:
            parts.append(endpoints)
        parts.append(
            f"netns={event.netns} family={family_name(event.family)} "
            f"protocol={protocol_name(event.family, event.protocol)}"
        )
        if event.is_return:
            parts.append(format_return(event.retval, event.duration_ns))
        detail = format_detail(event, with_tcp_state=not spec.sock_common)
        if detail:
            parts.append(detail)
        if spec.sock_common:
            parts.append(
                f"state={tcp_state_name(event.state)} reuseport={str(bool(event.reuseport)).lower()} "
                f"bound_ifindex={event.bound_dev_if}"
            )
        if spec.sock_info:
            parts.append(
                f"rx_dst_ifindex={event.rx_dst_ifindex} backlog_len={event.backlog_len} "
                f"rcv_buff={event.rcvbuf} snd_buff={event.sndbuf} priority={event.priority} "
                f"mark={event.mark} type={sock_type_name(event.type)}"
            )
        if spec.socket_info:
            parts.append(self._socket_info(event))
        parts.append(f"sk=0x{event.sk:x}" + (f" ino={event.socket_ino}" if event.has_socket else ""))
        line = " ".join(parts)
        if spec.stack and self._symbols is not None:
            line += "".join(f"\n    {self._symbols.describe(address)}" for address in record.stack)
        return line

    @staticmethod
    def _socket_info(event: Event) -> str:
        if not event.has_socket:
            return "socket=none"
        return (
            f"state={socket_state_name(event.socket_state)} type={sock_type_name(event.socket_type)} "
            f"flags={event.socket_flags:#x} f_ino={event.socket_ino}"
        )
