"""Formatting raw records: the table, JSON lines, timestamps, the summary and the exit report."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import re
import struct

from socketrace.contract import EVENT_RETURN, EVENT_SIZE, NO_PROBE_ID, SOCK_HAS_SOCKET, Counter, Event, ReturnKind
from socketrace.events import ProbeCount, SockCount, SummarySnapshot, TaskCount, stack_of
from socketrace.options import OutputSpec, Timestamp
from socketrace.output.clock import EventClock
from socketrace.output.json import JsonFormatter
from socketrace.output.report import Delivery, KernelRuns, accounting_lines
from socketrace.output.summary import SummaryRenderer
from socketrace.output.text import TextFormatter, header
from socketrace.symbols import KernelSymbols, ProbeTable, format_return

AF_INET, AF_INET6, AF_NETLINK, AF_UNIX = 2, 10, 16, 1
SK = 0xFFFF888012345678


def make_event(**fields: object) -> Event:
    event = Event(cpu=5, tgid=926, pid=926, comm=b"sshd", netns=4026531840, family=AF_INET, protocol=6, probe_id=0)
    event.sk = SK
    for name, value in fields.items():
        if name in ("saddr", "daddr"):
            packed = ipaddress.ip_address(value).packed  # type: ignore[arg-type]
            getattr(event, name)[: len(packed)] = list(packed)
        else:
            setattr(event, name, value)
    return event


def raw(**fields: object) -> bytes:
    return bytes(make_event(**fields))


PROBES = ProbeTable(
    ["tcp_sendmsg", "inet_bind", "sk_is_readable"], None, [ReturnKind.SIGNED, ReturnKind.SIGNED, ReturnKind.BOOL]
)


def formatter(**spec: object) -> TextFormatter:
    return TextFormatter(OutputSpec(**spec), PROBES)  # type: ignore[arg-type]


def test_header_has_the_originals_widths() -> None:
    assert header() == "CPU " + "PROCESS".ljust(32) + " " + "FUNC".ljust(32)


def test_ipv4_line_like_the_original() -> None:
    line = formatter().format(raw(saddr="192.168.64.2", sport=22, daddr="192.168.64.1", dport=55856, state=1))
    assert line == (
        "5   926(sshd)                        tcp_sendmsg                      "
        "192.168.64.2:22 -> 192.168.64.1:55856 netns=4026531840 family=AF_INET protocol=IPPROTO_TCP"
        " state=ESTABLISHED sk=0xffff888012345678 cookie=0"
    )


def test_ipv6_line() -> None:
    line = formatter().format(raw(family=AF_INET6, protocol=17, saddr="::1", sport=5000, daddr="fe80::2", dport=53))
    assert "[::1]:5000 -> [fe80::2]:53 netns=4026531840 family=AF_INET6 protocol=IPPROTO_UDP" in line


def test_netlink_protocol_by_name_and_no_tuple() -> None:
    line = formatter().format(raw(family=AF_NETLINK, protocol=0))
    assert line.endswith(
        "family=AF_NETLINK protocol=NETLINK_ROUTE portid=0 dst_portid=0 groups=0x0 sk=0xffff888012345678 cookie=0"
    )
    assert "tcp_sendmsg" + " " * 22 + "netns=" in line


def test_extra_fields() -> None:
    record = raw(
        state=1,
        reuseport=1,
        bound_dev_if=3,
        rx_dst_ifindex=2,
        rcvbuf=131072,
        sndbuf=16384,
        mark=9,
        type=1,
        sock_flags=SOCK_HAS_SOCKET,
        socket_state=3,
        socket_type=1,
        socket_ino=12345,
        cookie=0x4E2,
    )
    line = formatter(sock_common=True, sock_info=True, socket_info=True).format(record)
    assert "state=ESTABLISHED reuseport=true bound_ifindex=3" in line
    assert "rx_dst_ifindex=2 backlog_len=0 rcv_buff=131072 snd_buff=16384 priority=0 mark=9 type=SOCK_STREAM" in line
    assert line.endswith(
        "state=CONNECTED type=SOCK_STREAM flags=0x0 f_ino=12345 sk=0xffff888012345678 ino=12345 cookie=4e2"
    )


def test_cached_text_follows_the_bytes_it_came_from() -> None:
    """The caches are keyed by record bytes: a changed port, task or function gives a new line."""
    table = formatter()
    first = table.format_batch([raw(sport=1, dport=2), raw(sport=1, dport=2, probe_id=1), raw(sport=3, dport=2)])
    lines = first.splitlines()
    assert "tcp_sendmsg" in lines[0] and "inet_bind" in lines[1]
    assert "0.0.0.0:1 ->" in lines[0] and "0.0.0.0:3 ->" in lines[2]
    assert table.format(raw(sport=1, dport=2, tgid=7, comm=b"nc")).startswith("5   7(nc) ")


def test_stack_follows_the_event_and_is_symbolized() -> None:
    record = raw(stack_bytes=16) + struct.pack("=QQ", 0x1010, 0x2000) + b"\0" * 48
    assert stack_of(record) == (0x1010, 0x2000)
    symbols = KernelSymbols([(0x1000, "tcp_sendmsg"), (0x2000, "sock_sendmsg")])
    lines = TextFormatter(OutputSpec(stack=True), PROBES, symbols).format(record).splitlines()
    assert lines[1:] == ["    tcp_sendmsg+0x10", "    sock_sendmsg"]


def test_classic_kprobe_events_are_named_from_their_address() -> None:
    names = ProbeTable(["tcp_sendmsg", "udp_sendmsg"], {"tcp_sendmsg": 0x1000, "udp_sendmsg": 0x2000})
    assert names.name_of(1, 0) == "udp_sendmsg"  # probe id (tracepoints, kprobe-multi)
    assert names.name_of(NO_PROBE_ID, 0x2000) == "udp_sendmsg"  # bpf_get_func_ip
    assert names.name_of(NO_PROBE_ID, 0x1001) == "tcp_sendmsg"  # ip past the breakpoint
    assert names.name_of(NO_PROBE_ID, 0x1800) == "unknown+0x1800"


def test_return_values_as_their_type_reads() -> None:
    assert format_return(-98, 12_345, ReturnKind.SIGNED) == "ret=-98 errno=EADDRINUSE duration=12.3us"
    assert format_return(0, 1000, ReturnKind.VOID) == "duration=1.0us"  # void: no ret=
    assert format_return(1, 1000, ReturnKind.BOOL) == "ret=true duration=1.0us"
    pointer = 0xFFFF888000001000 - (1 << 64)
    assert format_return(pointer, 1000, ReturnKind.POINTER) == "ret=0xffff888000001000 duration=1.0us"
    assert format_return(-12, 1000, ReturnKind.POINTER) == "ret=0xfffffffffffffff4 errno=ENOMEM duration=1.0us"
    assert format_return(4294967198, 1000, ReturnKind.UNSIGNED) == "ret=4294967198 duration=1.0us"
    line = formatter().format(raw(flags=EVENT_RETURN, retval=-98, duration_ns=12_345, probe_id=1))
    assert "protocol=IPPROTO_TCP ret=-98 errno=EADDRINUSE duration=12.3us state=0 sk=" in line


def test_json_has_every_field_even_when_zero() -> None:
    event = raw(saddr="::1", daddr="::1", family=AF_INET6, sport=0, dport=0, ts_ns=5_000)
    fields = json.loads(JsonFormatter(PROBES, EventClock(Timestamp.NONE), None).format(event))
    assert fields["func"] == "tcp_sendmsg"
    assert (fields["saddr"], fields["sport"], fields["family"]) == ("::1", 0, "AF_INET6")
    assert fields["sk"] == "0xffff888012345678"
    assert fields["ino"] is None and fields["socket_state"] is None  # no struct socket
    assert fields["cookie"] == 0  # not assigned yet: a number all the same
    assert fields["stack"] == [] and fields["mark"] == 0 and fields["delta_ns"] == 0
    assert fields["ret"] is None and fields["duration_ns"] is None  # an entry, not a return
    unix = json.loads(JsonFormatter(PROBES, EventClock(Timestamp.NONE), None).format(raw(family=AF_UNIX)))
    assert unix["saddr"] is None and unix["daddr"] is None
    assert set(unix) == set(fields)


def test_json_return_values() -> None:
    clock = EventClock(Timestamp.NONE)
    failed = json.loads(
        JsonFormatter(PROBES, clock, None).format(raw(flags=EVENT_RETURN, retval=-98, duration_ns=5, probe_id=1))
    )
    assert (failed["ret"], failed["errno"], failed["duration_ns"]) == (-98, "EADDRINUSE", 5)
    readable = json.loads(JsonFormatter(PROBES, clock, None).format(raw(flags=EVENT_RETURN, retval=1, probe_id=2)))
    assert readable["ret"] is True and readable["errno"] is None


def test_cookie_in_ss_hex_in_the_table_and_a_number_in_json() -> None:
    """ss -e prints the cookie as sk:%llx: the table's cookie= is the same text, JSON the integer."""
    record = raw(cookie=0x1_0000_04E2, sock_flags=SOCK_HAS_SOCKET, socket_ino=7)
    assert formatter().format(record).endswith(" sk=0xffff888012345678 ino=7 cookie=1000004e2")
    fields = json.loads(JsonFormatter(PROBES, EventClock(Timestamp.NONE), None).format(record))
    assert (fields["ino"], fields["cookie"]) == (7, 0x1_0000_04E2)
    time_wait = formatter().format(raw(cookie=0x4E2, state=6))  # a mini sock: no socket, a cookie
    assert time_wait.endswith(" state=TIME_WAIT sk=0xffff888012345678 cookie=4e2")


def test_delta_is_per_socket() -> None:
    clock = EventClock(Timestamp.DELTA)
    first_a, first_b, second_a = clock.stamp(1, 1_000), clock.stamp(2, 1_500), clock.stamp(1, 4_000)
    assert (first_a.delta_ns, first_b.delta_ns, second_a.delta_ns) == (0, 0, 3_000)
    assert clock.column(second_a) == "+0.000003"
    lines = TextFormatter(OutputSpec(), PROBES, None, EventClock(Timestamp.DELTA)).format_batch(
        [raw(ts_ns=1_000), raw(ts_ns=2_500)]
    )
    assert [line.split()[0] for line in lines.splitlines()] == ["+0.000000", "+0.000002"]


def test_unix_path_peer_and_abstract_names() -> None:
    event = make_event(family=AF_UNIX, protocol=0)
    event.detail.unix_sk.peer = 0xFFFF888000001000
    path = b"/run/app.sock"
    event.detail.unix_sk.path_len = len(path)
    ctypes.memmove(ctypes.addressof(event.detail.unix_sk) + 12, path, len(path))
    line = formatter().format(bytes(event))
    assert "family=AF_UNIX protocol=0 path=/run/app.sock peer=0xffff888000001000 sk=" in line
    ctypes.memmove(ctypes.addressof(event.detail.unix_sk) + 12, b"\0abstract", 9)
    event.detail.unix_sk.path_len = 9
    assert "path=@abstract peer=" in formatter().format(bytes(event))


def test_summary_counts_per_period() -> None:
    renderer = SummaryRenderer(PROBES, top=5)
    tuple_ = (bytes([10, 0, 0, 1]) + bytes(12), bytes([10, 0, 0, 2]) + bytes(12))
    first = SummarySnapshot(
        {0: ProbeCount(2, 0, 0, (0,) * 32), 1: ProbeCount(1, 0, 0, (0,) * 32)},
        {SK: SockCount(3, 1, AF_INET, 6, tuple_[0], 1, tuple_[1], 2)},
        {926: TaskCount(3, "sshd")},
    )
    text = renderer.render(first, SummarySnapshot({}, {}, {}), 3, 1.0)
    assert "=== 3 events in 1.0 s ===" in text
    assert re.search(r"^tcp_sendmsg\s+2$", text, re.M) and re.search(r"^inet_bind\s+1$", text, re.M)
    assert re.search(r"^0xffff888012345678 10.0.0.1:1 -> 10.0.0.2:2 AF_INET IPPROTO_TCP\s+3$", text, re.M)
    assert re.search(r"^926\(sshd\)\s+3$", text, re.M)
    second = SummarySnapshot({0: ProbeCount(5, 0, 0, (0,) * 32)}, {}, {926: TaskCount(3, "sshd")})
    later = renderer.render(second, first, 3, 1.0)
    assert re.search(r"^tcp_sendmsg\s+3$", later, re.M)  # the period's growth, not the total
    assert "926(sshd)" not in later  # nothing new from it


def test_summary_latency_and_histogram() -> None:
    buckets = [0] * 32
    buckets[10], buckets[11] = 1, 3  # [1K, 2K) once, [2K, 4K) three times
    snapshot = SummarySnapshot({1: ProbeCount(4, 8_000, 3_500, tuple(buckets))}, {}, {})
    text = SummaryRenderer(PROBES, top=5).render(snapshot, SummarySnapshot({}, {}, {}), 4, 1.0)
    assert re.search(r"^inet_bind avg 2.0us max 3.5us\s+4$", text, re.M), text
    assert re.search(r"^\[1K, 2K\)\s+1 \|@+\s*\|$", text, re.M) and re.search(r"^\[2K, 4K\)\s+3 \|@{40}\|$", text, re.M)


def test_accounting_line_adds_up() -> None:
    counters = dict.fromkeys(Counter, 0)
    counters.update({Counter.EMITTED: 10, Counter.BUFFER_FULL: 4, Counter.NESTED: 1, Counter.NO_SOCK: 2})
    counters.update({Counter.FILTERED: 30, Counter.NOT_TRACING: 3})
    lines = accounting_lines(counters, Delivery(10), KernelRuns(50, None, 0))
    assert lines == [
        "10 events printed, 5 dropped (buffer full: 4, nested: 1), 2 probe runs without a socket,"
        " 30 filtered out, 3 before ready or after stop: 50 probe runs (the kernel counted 50)"
    ]
    summary = accounting_lines(counters, Delivery(10, summary=True), KernelRuns(None, None, 7))
    assert summary[0].startswith("10 events counted, 5 dropped") and "kernel counted" not in summary[0]
    assert summary[1] == "7 probe hits skipped by the kernel (a BPF program was already running)"
    gone = accounting_lines(counters, Delivery(6, unprinted=4, output_gone=True), KernelRuns(None, None, 0))
    assert gone[0].startswith("6 events printed, 5 dropped (buffer full: 4, nested: 1), 4 not printed (the output")
    # A stop under a flood: the drain ran out of time with events still in the buffer.
    stopped = accounting_lines(counters, Delivery(7, left=3), KernelRuns(None, None, 0))
    assert ", 3 not printed (left in the buffer at the stop), 2 probe runs" in stopped[0]
    both = accounting_lines(counters, Delivery(4, unprinted=2, left=4, output_gone=True), KernelRuns(None, None, 0))
    assert ", 6 not printed (the output stopped taking them: 2, left in the buffer at the stop: 4), " in both[0]


def test_return_drops_are_accounted_on_the_returns_line_only() -> None:
    counters = dict.fromkeys(Counter, 0)
    counters.update({Counter.EMITTED: 9, Counter.CALLS_FULL: 1, Counter.RETURN_EMITTED: 5})
    counters.update({Counter.RETURN_UNMATCHED: 2, Counter.RETURN_BUFFER_FULL: 2})
    entry, returns = accounting_lines(counters, Delivery(5, returns=True), KernelRuns(10, 9, 0))
    assert entry.startswith("5 events printed, 1 dropped (calls table full: 1),") and entry.endswith(
        ": 10 probe runs (the kernel counted 10)"
    )
    assert returns.startswith("9 returns: 5 events, 2 of calls not followed") and returns.endswith(
        "2 dropped (buffer full: 2) (the kernel counted 9)"
    )


def test_event_size() -> None:
    assert ctypes.sizeof(Event) == EVENT_SIZE == 320
