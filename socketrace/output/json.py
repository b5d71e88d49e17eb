"""``--output-json``: one object per event, every field present whatever its value."""

from __future__ import annotations

import json

from ..contract import EVENT_RETURN, SOCK_HAS_SOCKET, Event
from ..events import stack_of
from ..symbols import (
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    KernelSymbols,
    ProbeTable,
    errno_name,
    family_name,
    protocol_name,
    return_value,
    sock_type_name,
    socket_state_name,
    tcp_state_name,
)
from .clock import EventClock
from .text import addresses, unix_path

__all__ = ["JsonFormatter"]


class JsonFormatter:
    """Raw records to JSON lines; addresses are null for families without them, socket_* null
    without a socket, ret null where the function returns nothing (or the event is an entry)."""

    def __init__(self, probes: ProbeTable, clock: EventClock, symbols: KernelSymbols | None) -> None:
        self._probes = probes
        self._clock = clock
        self._symbols = symbols

    def format_batch(self, records: list[bytes]) -> str:
        """The lines of a batch of records, each ending in a newline."""
        return "".join(self.format(raw) + "\n" for raw in records)

    def format(self, raw: bytes) -> str:
        event = Event.from_buffer_copy(raw)
        stamps = self._clock.stamp(event.sk, event.ts_ns)
        saddr, daddr = addresses(event.family, bytes(event.saddr), bytes(event.daddr)) or (None, None)
        has_socket = bool(event.sock_flags & SOCK_HAS_SOCKET)
        is_unix, is_netlink = event.family == AF_UNIX, event.family == AF_NETLINK
        is_return = bool(event.flags & EVENT_RETURN)
        ret_kind = self._probes.ret_kind_of(event.probe_id)
        fields = {
            "time": stamps.wall_iso,
            "ts_ns": event.ts_ns,
            "relative_ns": stamps.relative_ns,
            "delta_ns": stamps.delta_ns,
            "cpu": event.cpu,
            "pid": event.tgid,
            "tid": event.pid,
            "comm": event.comm.decode(errors="replace"),
            "func": self._probes.name_of(event.probe_id, event.func_ip),
            "sk": f"0x{event.sk:x}",
            "ino": event.socket_ino if has_socket else None,
            "family": family_name(event.family),
            "protocol": protocol_name(event.family, event.protocol),
            "type": sock_type_name(event.type),
            "state": tcp_state_name(event.state),
            "saddr": saddr,
            "sport": event.sport,
            "daddr": daddr,
            "dport": event.dport,
            "netns": event.netns,
            "mark": event.mark,
            "priority": event.priority,
            "reuseport": bool(event.reuseport),
            "bound_ifindex": event.bound_dev_if,
            "rx_dst_ifindex": event.rx_dst_ifindex,
            "backlog_len": event.backlog_len,
            "rcvbuf": event.rcvbuf,
            "sndbuf": event.sndbuf,
            "socket_state": socket_state_name(event.socket_state) if has_socket else None,
            "socket_type": sock_type_name(event.socket_type) if has_socket else None,
            "socket_flags": event.socket_flags if has_socket else None,
            "unix_path": unix_path(event) if is_unix else None,
            "unix_peer": f"0x{event.detail.unix_sk.peer:x}" if is_unix else None,
            "netlink_portid": event.detail.netlink.portid if is_netlink else None,
            "netlink_dst_portid": event.detail.netlink.dst_portid if is_netlink else None,
            "netlink_groups": event.detail.netlink.groups if is_netlink else None,
            "packet_ifindex": event.detail.packet.ifindex if event.family == AF_PACKET else None,
            "ret": return_value(event.retval, ret_kind) if is_return else None,
            "errno": errno_name(event.retval, ret_kind) if is_return else None,
            "duration_ns": event.duration_ns if is_return else None,
            "stack": [self._symbols.describe(address) for address in stack_of(raw)] if self._symbols else [],
        }
        return json.dumps(fields, separators=(",", ":"))
