"""Decoding raw records and formatting lines, on synthetic events."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import re
import struct
from pathlib import Path

from socketrace.events import EVENT_SIZE, Event, decode_record
from socketrace.options import OutputSpec, Timestamp
from socketrace.output.clock import EventClock
from socketrace.output.json import JsonFormatter
from socketrace.output.summary import Summary
from socketrace.output.text import TextFormatter, header
from socketrace.symbols import KernelSymbols, ProbeNames, format_return

AF_INET, AF_INET6, AF_NETLINK, AF_UNIX = 2, 10, 16, 1


def make_event(**fields: object) -> Event:
    event = Event(cpu=5, tgid=926, pid=926, comm=b"sshd", netns=4026531840, family=AF_INET, protocol=6, probe_id=0)
    event.sk = 0xFFFF888012345678
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
    event = make_event(saddr="192.168.64.2", sport=22, daddr="192.168.64.1", dport=55856, state=1)
    line = formatter().format(decode_record(bytes(event)))
    assert line == (
        "5   926(sshd)                        tcp_sendmsg                      "
        "192.168.64.2:22 -> 192.168.64.1:55856 netns=4026531840 family=AF_INET protocol=IPPROTO_TCP"
        " state=ESTABLISHED sk=0xffff888012345678"
    )


def test_ipv6_line() -> None:
    event = make_event(family=AF_INET6, protocol=17, saddr="::1", sport=5000, daddr="fe80::2", dport=53)
    line = formatter().format(decode_record(bytes(event)))
    assert "[::1]:5000 -> [fe80::2]:53 netns=4026531840 family=AF_INET6 protocol=IPPROTO_UDP" in line


def test_netlink_protocol_by_name_and_no_tuple() -> None:
    event = make_event(family=AF_NETLINK, protocol=0)
    line = formatter().format(decode_record(bytes(event)))
    assert line.endswith(
        "family=AF_NETLINK protocol=NETLINK_ROUTE portid=0 dst_portid=0 groups=0x0 sk=0xffff888012345678"
    )
    assert "tcp_sendmsg" + " " * 22 + "netns=" in line


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
    assert line.endswith("state=CONNECTED type=SOCK_STREAM flags=0x0 f_ino=12345 sk=0xffff888012345678 ino=12345")


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
    assert ctypes.sizeof(Event) == EVENT_SIZE == 296


def test_classic_kprobe_events_are_named_from_their_address() -> None:
    names = ProbeNames(["tcp_sendmsg", "udp_sendmsg"], {"tcp_sendmsg": 0x1000, "udp_sendmsg": 0x2000})
    assert names.name_of(1, 0) == "udp_sendmsg"  # probe id (tracepoints, kprobe-multi)
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x2000) == "udp_sendmsg"  # bpf_get_func_ip
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x1001) == "tcp_sendmsg"  # ip past the breakpoint
    assert names.name_of(ProbeNames.NO_PROBE_ID, 0x1800) == "unknown+0x1800"


def test_event_size_matches_the_c_header() -> None:
    header_text = (Path(__file__).parents[2] / "bpf" / "socketrace.h").read_text()
    assert f"#define EVENT_SIZE {EVENT_SIZE}" in header_text


def test_json_has_every_field_even_when_zero() -> None:
    event = make_event(saddr="::1", daddr="::1", family=AF_INET6, sport=0, dport=0, ts_ns=5_000)
    clock = EventClock(Timestamp.NONE)
    line = JsonFormatter(ProbeNames(["tcp_sendmsg"]).name_of, clock, None).format(decode_record(bytes(event)))
    fields = json.loads(line)
    assert fields["func"] == "tcp_sendmsg"
    assert (fields["saddr"], fields["sport"], fields["family"]) == ("::1", 0, "AF_INET6")
    assert fields["sk"] == "0xffff888012345678"
    assert fields["ino"] is None and fields["socket_state"] is None  # no struct socket
    assert fields["stack"] == [] and fields["mark"] == 0 and fields["delta_ns"] == 0
    assert set(fields) >= {"time", "ts_ns", "relative_ns", "cpu", "pid", "tid", "comm", "protocol", "netns"}
    unix = json.loads(
        JsonFormatter(ProbeNames(["x"]).name_of, clock, None).format(decode_record(bytes(make_event(family=AF_UNIX))))
    )
    assert unix["saddr"] is None and unix["daddr"] is None


def test_delta_is_per_socket() -> None:
    clock = EventClock(Timestamp.DELTA)
    first_a = clock.stamp(make_event(sk=1, ts_ns=1_000))
    first_b = clock.stamp(make_event(sk=2, ts_ns=1_500))
    second_a = clock.stamp(make_event(sk=1, ts_ns=4_000))
    assert (first_a.delta_ns, first_b.delta_ns, second_a.delta_ns) == (0, 0, 3_000)
    assert clock.column(second_a) == "+0.000003"


def test_summary_counts_and_starts_a_new_period() -> None:
    summary = Summary(ProbeNames(["tcp_sendmsg", "tcp_recvmsg"]).name_of, top=5)
    for probe_id in (0, 0, 1):
        summary.add(
            decode_record(bytes(make_event(probe_id=probe_id, saddr="10.0.0.1", daddr="10.0.0.2", sport=1, dport=2)))
        )
    text = summary.render(1.0)
    assert "=== 3 events in 1.0 s ===" in text
    assert re.search(r"^tcp_sendmsg\s+2$", text, re.M) and re.search(r"^tcp_recvmsg\s+1$", text, re.M)
    assert re.search(r"^0xffff888012345678 10.0.0.1:1 -> 10.0.0.2:2 AF_INET IPPROTO_TCP\s+3$", text, re.M)
    assert re.search(r"^926\(sshd\)\s+3$", text, re.M)
    assert "=== 0 events" in summary.render(1.0)


def test_unix_path_peer_and_abstract_names() -> None:
    event = make_event(family=AF_UNIX, protocol=0)
    event.detail.unix_sk.peer = 0xFFFF888000001000
    path = b"/run/app.sock"
    event.detail.unix_sk.path_len = len(path)
    ctypes.memmove(ctypes.addressof(event.detail.unix_sk) + 12, path, len(path))
    line = formatter().format(decode_record(bytes(event)))
    assert "family=AF_UNIX protocol=0 path=/run/app.sock peer=0xffff888000001000 sk=" in line
    ctypes.memmove(ctypes.addressof(event.detail.unix_sk) + 12, b"\0abstract", 9)
    event.detail.unix_sk.path_len = 9
    assert decode_record(bytes(event)).event.unix_path == "@abstract"


def test_return_value_errno_and_duration() -> None:
    event = make_event(flags=2, retval=-98, duration_ns=12_345)
    line = formatter().format(decode_record(bytes(event)))
    assert "ret=-98 errno=EADDRINUSE duration=12.3us" in line
    assert format_return(0xFFFF888000001000 - (1 << 64), 1000) == "ret=0xffff888000001000 duration=1.0us"
    fields = json.loads(
        JsonFormatter(ProbeNames(["tcp_sendmsg"]).name_of, EventClock(Timestamp.NONE), None).format(
            decode_record(bytes(event))
        )
    )
    assert (fields["ret"], fields["errno"], fields["duration_ns"]) == (-98, "EADDRINUSE", 12_345)
    entry = json.loads(
        JsonFormatter(ProbeNames(["tcp_sendmsg"]).name_of, EventClock(Timestamp.NONE), None).format(
            decode_record(bytes(make_event()))
        )
    )
    assert entry["ret"] is None and entry["duration_ns"] is None


def test_summary_latency_per_function() -> None:
    summary = Summary(ProbeNames(["inet_bind"]).name_of, top=5)
    for duration in (1_000, 3_000):
        summary.add(decode_record(bytes(make_event(flags=2, retval=0, duration_ns=duration))))
    assert re.search(r"^inet_bind avg 2.0us max 3.0us\s+2$", summary.render(1.0), re.M)
