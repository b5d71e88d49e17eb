"""``--output-json``: one object per event, every field present whatever its value.

Like the table, the JSON text of what repeats is cached by the record bytes
it comes from: the socket's fields (``sk`` to ``packet_ifindex``) and the task
and function; only the times, the thread, the return value and the stack are
serialized per event. Caches are bounded as the table's are.
"""

from __future__ import annotations

import json
import struct
import time

from ..contract import EVENT_RETURN, SOCK_HAS_SOCKET, SOCKET_PART, WHO_PART, WHO_STRUCT, Event
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
from .text import MAX_CACHED, addresses, unix_path

__all__ = ["JsonFormatter"]

_PER_EVENT = struct.Struct("=QqQII")  # ts_ns, retval, duration_ns, pid (thread), flags


class JsonFormatter:
    """Raw records to JSON lines; addresses are null for families without them, socket_* null
    without a socket, ret null where the function returns nothing (or the event is an entry)."""

    def __init__(self, probes: ProbeTable, clock: EventClock, symbols: KernelSymbols | None) -> None:
        self._probes = probes
        self._clock = clock
        self._symbols = symbols
        self._who: dict[bytes, tuple[str, str]] = {}
        self._sock: dict[bytes, str] = {}
        self._second = (-1, "")  # the last wall-clock second and its text

    def format_batch(self, records: list[bytes]) -> str:
        """The lines of a batch of records, each ending in a newline."""
        return "".join(self.format(raw) + "\n" for raw in records)

    def format(self, raw: bytes) -> str:
        ts_ns, retval, duration_ns, tid, flags = _PER_EVENT.unpack_from(raw, 0)
        sk_bytes = raw[SOCKET_PART[0] : SOCKET_PART[1]]
        (sk,) = struct.unpack_from("=Q", sk_bytes)
        stamps = self._clock.stamp(sk, ts_ns)
        who_key = raw[WHO_PART[0] : WHO_PART[1]]
        before_tid, after_tid = self._who.get(who_key) or self._who_json(who_key)
        socket_fields = self._sock.get(sk_bytes) or self._sock_json(raw, sk_bytes)
        if flags & EVENT_RETURN:
            kind = self._probes.ret_kind_of(WHO_STRUCT.unpack(who_key)[2])
            ret = json.dumps(return_value(retval, kind))
            ret_fields = f'"ret":{ret},"errno":{json.dumps(errno_name(retval, kind))},"duration_ns":{duration_ns}'
        else:
            ret_fields = '"ret":null,"errno":null,"duration_ns":null'
        stack = json.dumps([self._symbols.describe(a) for a in stack_of(raw)]) if self._symbols else "[]"
        return (
            f'{{"time":"{self._wall(stamps.wall_ns)}","ts_ns":{ts_ns},"relative_ns":{stamps.relative_ns},'
            f'"delta_ns":{stamps.delta_ns},{before_tid}"tid":{tid},{after_tid}{socket_fields},{ret_fields},'
            f'"stack":{stack}}}'
        )

    def _wall(self, wall_ns: int) -> str:
        """ISO 8601 in UTC with microseconds; the date and time are formatted once a second."""
        seconds, nanos = divmod(wall_ns, 1_000_000_000)
        if seconds != self._second[0]:
            self._second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
        return f"{self._second[1]}.{nanos // 1000:06d}Z"

    def _who_json(self, who_key: bytes) -> tuple[str, str]:
        func_ip, cpu, probe_id, tgid, comm = WHO_STRUCT.unpack(who_key)
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        func = self._probes.name_of(probe_id, func_ip)
        parts = (f'"cpu":{cpu},"pid":{tgid},', f'"comm":{json.dumps(name)},"func":{json.dumps(func)},')
        if len(self._who) >= MAX_CACHED:
            self._who.clear()
        self._who[who_key] = parts
        return parts

    def _sock_json(self, raw: bytes, sk_bytes: bytes) -> str:
        event = Event.from_buffer_copy(raw)
        saddr, daddr = addresses(event.family, bytes(event.saddr), bytes(event.daddr)) or (None, None)
        has_socket = bool(event.sock_flags & SOCK_HAS_SOCKET)
        is_unix, is_netlink = event.family == AF_UNIX, event.family == AF_NETLINK
        fields = {
            "sk": f"0x{event.sk:x}",
            "ino": event.socket_ino if has_socket else None,
            "cookie": event.cookie,
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
        }
        text = json.dumps(fields, separators=(",", ":"))[1:-1]
        if len(self._sock) >= MAX_CACHED:
            self._sock.clear()
        self._sock[sk_bytes] = text
        return text
