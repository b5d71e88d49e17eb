"""Options and discovery become the program's -D macros: integers only, one macro per fact."""

from __future__ import annotations

import ipaddress
import re
import sys

from socketrace.contract import ArgKind
from socketrace.discovery import MISSING_FIELD, Discovery, FieldLocation, Probe, ProbeKind
from socketrace.features import Features
from socketrace.filter_expr import parse_filter
from socketrace.options import AttachWay, Filters, Options, OutputSpec
from socketrace.program import kernel_version_code, macro_definitions, plan_program, program_listing

FIELDS = {
    "SK_FAMILY": FieldLocation(16, 2, 0, 16),
    "SK_REUSEPORT": FieldLocation(19, 1, 4, 1),
    "SK_GONE": MISSING_FIELD,
}
RING = Features(ring_buffer=True, kprobes=False)
INTEGER_LIST = re.compile(r"^-?\d+(U|ULL)?(,-?\d+)*$")
# Macros whose value is an entry point's name: identifiers made by socketrace.contract, never user input.
NAME_MACROS = {"KPROBE_MULTI_ENTRY_NAME", "KPROBE_MULTI_RETURN_NAME", "SHARED_HANDLER_NAME"}
# FILTER_EXPR, the one macro that is an expression: integers, accessor names and operators (filter_expr's tokens).
_ACCESSOR = r"F_(?:PID|FAMILY|STATE|SPORT|DPORT|SADDR4|DADDR4|PROTOCOL|MARK|NETNS)|F_[SD]ADDR6\([0-3]\)"
EXPRESSION = re.compile(rf"(?:\s+|[0-9]+U?|{_ACCESSOR}|==|!=|<=|>=|<<|&&|\|\||[<>&!()])*")


def _macros(**filters: object) -> dict[str, str]:
    return macro_definitions(Options(filters=Filters(**filters)), FIELDS, RING)  # type: ignore[arg-type]


def test_fields_are_offset_size_shift_bits() -> None:
    macros = _macros()
    assert macros["SK_FAMILY"] == "16,2,0,16"
    assert macros["SK_REUSEPORT"] == "19,1,4,1"
    assert macros["SK_GONE"] == "-1,0,0,0"


def test_no_filter_no_filter_macro() -> None:
    assert not [name for name in _macros() if name.startswith("FILTER_")]


def test_each_filter_has_its_macro() -> None:
    macros = _macros(pid=42, netns=4026531840, mark=7, protocol=6, port=22)
    assert macros["FILTER_PID"] == "42"
    assert macros["FILTER_NETNS"] == "4026531840"
    assert macros["FILTER_MARK"] == "7"
    assert macros["FILTER_PROTOCOL"] == "6"
    assert macros["FILTER_PORT"] == "22"
    assert macros["FILTER_INET"] == "1"


def test_ipv4_address_also_matches_its_mapped_ipv6_form() -> None:
    macros = _macros(addr=ipaddress.ip_address("127.0.0.1"))
    packed = bytes([127, 0, 0, 1])
    assert macros["FILTER_ADDR4"] == str(int.from_bytes(packed, sys.byteorder))
    words = [int(macros[f"FILTER_ADDR6_{i}"].rstrip("U")) for i in range(4)]
    assert b"".join(w.to_bytes(4, sys.byteorder) for w in words) == b"\0" * 10 + b"\xff\xff" + packed
    assert macros["FILTER_INET"] == "1"


def test_ipv6_address() -> None:
    macros = _macros(addr=ipaddress.ip_address("::1"))
    assert "FILTER_ADDR4" not in macros
    assert [macros[f"FILTER_ADDR6_{i}"] for i in range(4)] == [
        "0U",
        "0U",
        "0U",
        str(1 << 24 if sys.byteorder == "little" else 1) + "U",
    ]


def test_outputs_and_buffer() -> None:
    options = Options(output=OutputSpec(sock_info=True, stack=True))
    macros = macro_definitions(options, FIELDS, Features(ring_buffer=False, kprobes=False))
    assert macros["OUTPUT_SOCK_INFO"] == "1"
    assert macros["OUTPUT_STACK"] == "1"
    assert macros["USE_PERF_BUFFER"] == "1"
    assert "OUTPUT_SOCKET_INFO" not in macros


def test_every_macro_is_integers_only() -> None:
    tree = parse_filter(
        "not ( sport = :22 or dport < 1024 ) and src 10.0.0.0/8 or ( dst ::1/128 fwmark = 7 state bucket )"
    )
    options = Options(
        filters=Filters(pid=1, netns=2, mark=3, protocol=4, port=5, addr=ipaddress.ip_address("::1"), expr=tree)
    )
    probes = [
        Probe("inet_sock_set_state", 0, ArgKind.SOCK, ProbeKind.TRACEPOINT),
        Probe("kfree_skb", 1, ArgKind.SKB, ProbeKind.TRACEPOINT),
    ]
    plan = plan_program(options, Discovery([], probes, dict(FIELDS)), AttachWay.TRACEPOINT, RING)
    for name, value in plan.macros.items():
        if name == "RAW_TRACEPOINTS":
            assert value == "RAWTP(rawtp_0,0,0,0)RAWTP(rawtp_1,1,1,2)"
        elif name in NAME_MACROS:
            assert re.fullmatch(r"[a-z_]+", value), (name, value)
        elif name == "FILTER_EXPR":
            assert EXPRESSION.fullmatch(value) and value.count("(") == value.count(")"), value
        else:
            assert INTEGER_LIST.match(value), (name, value)
    assert [entry.name for entry in plan.entries] == ["rawtp_0", "rawtp_1"]
    assert plan.shared_handler is not None and plan.shared_handler.name == "shared_handler"
    assert "-DFILTER_PORT=5" in plan.cflags
    listing = program_listing(plan)
    assert "#define FILTER_PORT 5" in listing
    assert f"#define FILTER_EXPR {plan.macros['FILTER_EXPR']}\n" in listing  # what --ebpf --filter shows
    assert "int SHARED_HANDLER_NAME(void *ctx)" in listing


def test_kernel_version_code() -> None:
    assert kernel_version_code("6.18.44-fc-v595") == (6 << 16) + (18 << 8) + 44
    assert kernel_version_code("5.4.300") == (5 << 16) + (4 << 8) + 255
    assert kernel_version_code("6.1") == (6 << 16) + (1 << 8)


def test_track_sock_and_json_outputs() -> None:
    options = Options(filters=Filters(port=22, track_sock=True), output=OutputSpec(json=True))
    macros = macro_definitions(options, FIELDS, RING)
    assert macros["TRACK_SOCK"] == "1"
    assert macros["OUTPUT_SOCK_INFO"] == "1" and macros["OUTPUT_SOCKET_INFO"] == "1"  # JSON carries every field


def test_spans_cover_the_fields_they_copy() -> None:
    fields = {
        "SK_FAMILY": FieldLocation(16, 2, 0, 16),
        "SK_V6_RCV_SADDR": FieldLocation(72, 16, 0, 128),
        "SK_MARK": FieldLocation(524, 4, 0, 32),
        "SK_SNDBUF": FieldLocation(568, 4, 0, 32),
        "SOCKET_STATE": FieldLocation(0, 4, 0, 32),
        "SOCKET_INODE_INO": FieldLocation(192, 8, 0, 64),
        "SK_GONE": MISSING_FIELD,
    }
    macros = macro_definitions(Options(), fields, RING)
    assert (macros["SK_COMMON_SPAN"], macros["SK_SPAN"], macros["SOCKET_SPAN"]) == ("88", "576", "200")
    far = dict(fields, SK_SNDBUF=FieldLocation(5000, 4, 0, 32))  # a debug kernel's giant struct sock
    assert macro_definitions(Options(), far, RING)["SK_SPAN"] == "1024"  # capped; the C reads the rest alone


def test_kprobe_multi_entries_and_return_program() -> None:
    discovery = Discovery([Probe("tcp_sendmsg", 0, ArgKind.SOCK, ProbeKind.FUNCTION)], [], dict(FIELDS))
    features = Features(ring_buffer=True, kprobes=True, kprobe_multi=True, bcc_kprobe_multi=True)
    plain = plan_program(Options(), discovery, AttachWay.KPROBE_MULTI, features)
    assert [entry.name for entry in plain.entries] == ["kprobe_multi_entry"] and plain.shared_handler is None
    returns = plan_program(Options(output=OutputSpec(return_values=True)), discovery, AttachWay.KPROBE_MULTI, features)
    assert [entry.name for entry in returns.entries] == ["kprobe_multi_entry", "kprobe_multi_return"]
    assert returns.macros["OUTPUT_RETURN"] == "1"


def test_summary_is_counted_in_the_kernel() -> None:
    probes = [Probe(name, 0, ArgKind.SOCK, ProbeKind.TRACEPOINT) for name in ("a", "b", "c")]
    options = Options(output=OutputSpec(summary=True))
    plan = plan_program(options, Discovery([], probes, dict(FIELDS)), AttachWay.TRACEPOINT, RING)
    assert plan.macros["OUTPUT_SUMMARY"] == "1" and plan.macros["SUMMARY_PROBES"] == "3"


def test_filter_expression_macros() -> None:
    """FILTER_EXPR, HAVE_<accessor> per accessor it reads, the head copy when it reads the head, and the IPv6
    addresses in that copy when it tests them."""
    fields = {
        **FIELDS,
        "SK_DADDR": FieldLocation(0, 4, 0, 32),
        "SK_STATE": FieldLocation(18, 1, 0, 8),
        "SK_V6_DADDR": FieldLocation(56, 16, 0, 128),
        "SK_V6_RCV_SADDR": FieldLocation(72, 16, 0, 128),
    }

    def macros(text: str) -> dict[str, str]:
        return macro_definitions(Options(filters=Filters(expr=parse_filter(text))), fields, RING)

    ports = macros("not ( sport = :22 or dport = :22 )")
    assert ports["FILTER_EXPR"].startswith("!((") and "F_SPORT == 22" in ports["FILTER_EXPR"]
    assert {name for name in ports if name.startswith("HAVE_F_")} == {"HAVE_F_SPORT", "HAVE_F_DPORT", "HAVE_F_FAMILY"}
    assert ports["FILTERS_READ_HEAD"] == "1" and ports["SK_HEAD_SPAN"] == "24"
    assert "FILTER_INET" not in ports  # the expression guards its own port tests
    assert macros("dst ::1")["SK_HEAD_SPAN"] == "72"  # skc_v6_daddr joins the head copy
    assert macros("src ::1")["SK_HEAD_SPAN"] == "88"
    namespace = macros("netns 4026531840")
    assert namespace["HAVE_F_NETNS"] == "1" and "FILTERS_READ_HEAD" not in namespace
    assert "FILTER_EXPR" not in _macros()
