"""Decoding raw records and formatting lines, on synthetic events."""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from pathlib import Path

from socketrace.events import EVENT_SIZE, Event, decode_record
from socketrace.options import OutputSpec
from socketrace.output.text import TextFormatter, header
from socketrace.symbols import KernelSymbols, ProbeNames

AF_INET, AF_INET6, AF_NETLINK, AF_UNIX = 2, 10, 16, 1


def make_event(**fields: object) -> Event:
    event = Event(cpu=5, tgid=926, pid=926, comm=b"sshd", netns=4026531840, family=AF_INET, protocol=6, probe_id=0)
    for name, value in fields.items():
        if name in ("saddr", "daddr"):
            packed = ipaddress.ip_address(value).packed  # type: ignore[arg-type]
            getattr(event, name)[: len(packed)] = list(packed)
        else:
            setattr(event, name, value)
    return event


def formatter(**spec: bool) -> TextFormatter:
    return TextFormatter(OutputSpec(**spec), ProbeNames(["tcp_sendmsg"]).name_of)


def test_header_has_the_originals_widths() -> None:
    assert header() == "CPU " + "PROCESS".ljust(32) + " " + "FUNC".ljust(32)


def test_ipv4_line_like_the_original() -> None:
    event = make_event(saddr="192.168.64.2", sport=22, daddr="192.168.64.1", dport=55856)
    line = formatter().format(decode_record(bytes(event)))
    assert line == (
        "5   926(sshd)                        tcp_sendmsg                      "
        "192.168.64.2:22 -> 192.168.64.1:55856 netns=4026531840 family=AF_INET protocol=IPPROTO_TCP"
    )


def test_ipv6_line() -> None:
    event = make_event(family=AF_INET6, protocol=17, saddr="::1", sport=5000, daddr="fe80::2", dport=53)
    line = formatter().format(decode_record(bytes(event)))
    assert "[::1]:5000 -> [fe80::2]:53 netns=4026531840 family=AF_INET6 protocol=IPPROTO_UDP" in line


def test_netlink_protocol_by_name_and_no_tuple() -> None:
    event = make_event(family=AF_NETLINK, protocol=0)
    line = formatter().format(decode_record(bytes(event)))
    assert line.endswith("tcp_sendmsg                      netns=4026531840 family=AF_NETLINK protocol=NETLINK_ROUTE")


def test_extra_fields() -> None:
    event = make_event(
        state=1,
        reuseport=1,
        bound_dev_if=3,
        rx_dst_ifindex=2,
        backlog_len=0,
        rcvbuf=131072,
        sndbuf=16384,
        priority=0,
        mark=9,
        type=1,
        flags=1,
        socket_state=3,
        socket_type=1,
        socket_flags=0,
        socket_ino=12345,
    )
    line = formatter(sock_common=True, sock_info=True, socket_info=True).format(decode_record(bytes(event)))
    assert "state=ESTABLISHED reuseport=true bound_ifindex=3" in line
    assert "rx_dst_ifindex=2 backlog_len=0 rcv_buff=131072 snd_buff=16384 priority=0 mark=9 type=SOCK_STREAM" in line
    assert line.endswith("state=CONNECTED type=SOCK_STREAM flags=0x0 f_ino=12345")


def test_stack_follows_the_event_and_is_symbolized() -> None:
    event = make_event(stack_bytes=16)
    raw = bytes(event) + struct.pack("<QQ", 0x1010, 0x2000) + b"\0" * 48
    record = decode_record(raw)
    assert record.stack == (0x1010, 0x2000)
    symbols = KernelSymbols([(0x1000, "tcp_sendmsg"), (0x2000, "sock_sendmsg")])
    spec = OutputSpec(stack=True)
    lines = TextFormatter(spec, ProbeNames(["tcp_sendmsg"]).name_of, symbols).format(record).splitlines()
    assert lines[1:] == ["    tcp_sendmsg+0x10", "    sock_sendmsg"]


def test_event_size_is_pinned() -> None:
    assert ctypes.sizeof(Event) == EVENT_SIZE == 160


def test_classic_kprobe_events_are_named_from_their_address() -> None:
    names = ProbeNames(["tcp_sendmsg", "udp_sendmsg"], {"tcp_sendmsg": 0x1000, "udp_sendmsg": 0x2000})
    assert names.name_of(1, 0) == "udp_sendmsg"  # probe id (tracepoints, kprobe-multi)
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x2000) == "udp_sendmsg"  # bpf_get_func_ip
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x1001) == "tcp_sendmsg"  # ip past the breakpoint
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x1800) == "unknown+0x1800"


def test_event_size_matches_the_c_header() -> None:
    header_text = (Path(__file__).parents[2] / "bpf" / "socketrace.h").read_text()
    assert f"#define EVENT_SIZE {EVENT_SIZE}" in header_text
