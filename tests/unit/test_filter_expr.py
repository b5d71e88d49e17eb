"""--filter EXPR: parsing, errors, the Python evaluator, and the C it compiles to (checked against the evaluator)."""

from __future__ import annotations

import ipaddress
import random
import re
import sys
from typing import Any

import pytest

from socketrace.filter_expr import (
    ACCESSORS,
    ALL_STATES,
    MAX_DEPTH,
    MAX_PORT_SETS,
    MAX_TERMS,
    PORT_SET_MIN,
    PREFIX_SET_MIN,
    AddrTest,
    And,
    FamilyTest,
    FilterSyntaxError,
    MarkTest,
    NetnsTest,
    Node,
    Not,
    Or,
    PidTest,
    PortTest,
    ProtocolTest,
    Sets,
    StateTest,
    accessors_used,
    evaluate,
    lookup_sets,
    parse_filter,
    port_sets,
    to_c,
    to_text,
)
from socketrace.options import OptionError
from socketrace.symbols import AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, family_name, protocol_name, tcp_state_name

LOCALHOST4 = int(ipaddress.IPv4Address("127.0.0.1"))
NS = 4026531833

# (expression, column of the error or None, part of the message)
BAD = [
    ("", None, "empty expression"),
    ("   ", None, "empty expression"),
    ("dport = ", 9, "expected a port after 'dport ='"),
    ("sport", 6, "expected a port after 'sport'"),
    ("sport = :nosuchservice", 9, "unknown service 'nosuchservice'"),
    ("sport = :65536", 9, "port 65536 is out of range 0-65535"),
    ("sport = :-1", 9, "expected a port after 'sport ='"),
    ("sport =< 22", 8, "expected a port after 'sport =', found '<'"),
    ("sport = ( 22 )", 9, "expected a port"),
    ("dport > :ssh:", 9, "expected a port"),
    ("src localhost", 5, "socketrace resolves no names"),
    ("dst example.com/24", 5, "socketrace resolves no names"),
    ("src 1.2.3.4/33", 13, "prefix /33 is longer than an IPv4 address"),
    ("src ::1/129", 9, "prefix /129 is longer than an IPv6 address"),
    ("src [::1/129]", 10, "prefix /129"),
    ("src 1.2.3.4/x", 13, "expected a prefix length after '/'"),
    ("src [::1]/128", 10, "expected ':PORT' or nothing after ']'"),
    ("src [::1", 5, "expected ']'"),
    ("src 1.2.3.256", 5, "expected an IPv4 or IPv6 address"),
    ("src 127.1", 5, "shortened IPv4 network"),
    ("src fe80::1%eth0", 5, "expected an IPv4 or IPv6 address"),
    ("src 1.2.3.4:", 13, "expected a port after 'src 1.2.3.4:'"),
    ("src = != 1.2.3.4", 7, "expected an address after 'src ='"),
    ("( sport = 1", 12, "expected ')' closing the '(' of column 1"),
    ("sport = 1 )", 11, "unbalanced ')'"),
    (")", 1, "expected a term"),
    ("( )", 3, "expected a term"),
    ("sport = 1 and", 14, "expected a term after 'and'"),
    ("or sport = 1", 1, "expected a term"),
    ("sport = 1 or or sport = 2", 14, "expected a term"),
    ("sport = 1 && || sport = 2", 14, "found '||'"),
    ("not", 4, "expected a term after 'not'"),
    ("sport = 1 = 2", 11, "expected a term"),
    ("cgroup /sys", 1, "expected a term (src, dst, sport"),
    ("sport = 1 or sport = 2 and sport = 3", 24, "needs parentheses"),
    ("sport = 1 or sport = 2 sport = 3", 24, "needs parentheses"),
    ("not " * (MAX_DEPTH + 1) + "sport = 1", 4 * MAX_DEPTH + 1, f"nested deeper than {MAX_DEPTH}"),
    ("(" * (MAX_DEPTH + 1) + "sport = 1" + ")" * (MAX_DEPTH + 1), MAX_DEPTH + 1, "nested deeper"),
    (" ".join(["sport = 1"] * (MAX_TERMS + 1)), MAX_TERMS * 10 + 1, f"more than {MAX_TERMS} terms"),
    ("fwmark = 0x3/0x1", 10, "can never match"),
    ("fwmark = 4294967296", 10, "does not fit in 32 bits"),
    ("fwmark = abc", 10, "expected a mark after 'fwmark ='"),
    ("fwmark = 1/", 12, "expected a mask after '/'"),
    ("fwmark < 3", 8, "expected a mark after 'fwmark', found '<'"),
    ("protocol tcpx", 10, "expected a protocol"),
    ("protocol 65536", 10, "expected a protocol"),
    ("family inet4", 8, "expected a family (inet, inet6, unix, netlink, packet)"),
    ("netns 0", 7, "no namespace's inode"),
    ("netns /run/netns/x", 7, "expected a namespace inode"),
    ("pid -1", 5, "expected a process id"),
    ("pid 99999999999", 5, "expected a process id"),
    ("state", 6, "expected a state after 'state'"),
    ("state establish", 7, "expected a state (established"),
    ("exclude state", 9, "expected a state"),
    ("state listening state", 22, "expected a state after 'state'"),
    ("sport = :" + "x" * 100, 9, "..."),
]


@pytest.mark.parametrize(("text", "column", "message"), BAD, ids=[repr(case[0][:30]) for case in BAD])
def test_bad_expressions(text: str, column: int | None, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(text)
    error = str(caught.value)
    assert isinstance(caught.value, OptionError)
    assert "\n" not in error and error.startswith("--filter: ")
    assert message in error
    if column is not None:
        assert error.endswith(f"(column {column})")


def test_bad_table_is_large() -> None:
    assert len(BAD) >= 40


def _port(end: str, port: int, op: str = "==") -> PortTest:
    return PortTest(end, op, port)


def _v4(end: str, text: str, prefix: int = 32) -> AddrTest:
    return AddrTest(end, AF_INET, int(ipaddress.IPv4Address(text)), prefix)


def _v6(end: str, text: str, prefix: int = 128) -> AddrTest:
    return AddrTest(end, AF_INET6, int(ipaddress.IPv6Address(text)), prefix)


def _nested_nots(node: Node, count: int) -> Node:
    for _ in range(count):
        node = Not(node)
    return node


SPORT22, DPORT22 = _port("src", 22), _port("dst", 22)
GOOD: list[tuple[str, Node]] = [
    ("not ( sport = :22 or dport = :22 )", Not(Or((SPORT22, DPORT22)))),
    ("sport = 22", SPORT22),
    ("sport :22", SPORT22),
    ("sport == :ssh", SPORT22),
    ("sport eq ssh", SPORT22),
    ("sport=:22", SPORT22),
    ("dport != 80", _port("dst", 80, "!=")),
    ("dport ne 80", _port("dst", 80, "!=")),
    ("dport neq 80", _port("dst", 80, "!=")),
    ("sport lt 1024", _port("src", 1024, "<")),
    ("sport le 1024", _port("src", 1024, "<=")),
    ("sport leq 1024", _port("src", 1024, "<=")),
    ("sport gt 1024", _port("src", 1024, ">")),
    ("sport ge 1024", _port("src", 1024, ">=")),
    ("sport geq 1024", _port("src", 1024, ">=")),
    ("sport >= :1024", _port("src", 1024, ">=")),
    ("sport = :22 dport = :22", And((SPORT22, DPORT22))),
    ("sport = :22 and dport = :22", And((SPORT22, DPORT22))),
    ("sport = :22 && dport = :22", And((SPORT22, DPORT22))),
    ("sport = :22 & dport = :22", And((SPORT22, DPORT22))),
    ("sport = :22 | dport = :22", Or((SPORT22, DPORT22))),
    ("sport = :22 || dport = :22", Or((SPORT22, DPORT22))),
    ("!sport = :22", Not(SPORT22)),
    ("not not sport = :22", Not(Not(SPORT22))),
    ("sport = :22 and dport = :22 or sport = :80", Or((And((SPORT22, DPORT22)), _port("src", 80)))),
    ("sport = :22 or ( dport = :22 and sport = :80 )", Or((SPORT22, And((DPORT22, _port("src", 80)))))),
    ("( sport = :22 ( dport = :22 ) ) and sport = :80", And((SPORT22, DPORT22, _port("src", 80)))),
    ("src 127.0.0.1", _v4("src", "127.0.0.1")),
    ("src = 127.0.0.1/32", _v4("src", "127.0.0.1")),
    ("dst 127.1.2.3/8", _v4("dst", "127.0.0.0", 8)),
    ("dst 193.233.7/24", _v4("dst", "193.233.7.0", 24)),
    ("dst 10/8", _v4("dst", "10.0.0.0", 8)),
    ("src 0.0.0.0/0", _v4("src", "0.0.0.0", 0)),
    ("src ::1", _v6("src", "::1")),
    ("src [::1]", _v6("src", "::1")),
    ("src [2001:db8::1/32]", _v6("src", "2001:db8::", 32)),
    ("src ::ffff:127.0.0.1", _v6("src", "::ffff:127.0.0.1")),
    ("dst ::/0", _v6("dst", "::", 0)),
    ("src != 127.0.0.1", Not(_v4("src", "127.0.0.1"))),
    ("src 127.0.0.1:22", And((_v4("src", "127.0.0.1"), SPORT22))),
    ("dst [::1]:ssh", And((_v6("dst", "::1"), DPORT22))),
    ("fwmark = 0x13", MarkTest(0x13, 0xFFFFFFFF)),
    ("fwmark 19/255", MarkTest(0x13, 0xFF)),
    ("fwmark != 0x10/0xf0", Not(MarkTest(0x10, 0xF0))),
    ("protocol tcp", ProtocolTest(6)),
    ("protocol = MPTCP", ProtocolTest(262)),
    ("protocol 200", ProtocolTest(200)),
    ("family inet6", FamilyTest(AF_INET6)),
    ("family != unix", Not(FamilyTest(AF_UNIX))),
    ("netns 4026531833", NetnsTest(NS)),
    ("pid 0", PidTest(0)),
    ("state established", StateTest(frozenset({1}))),
    ("state syn-recv", StateTest(frozenset({3, 12}))),
    ("state listening state time-wait", StateTest(frozenset({6, 10}))),
    ("exclude listening", StateTest(ALL_STATES - {10})),
    ("state connected", StateTest(frozenset({1, 2, 3, 4, 5, 6, 8, 9, 11, 12}))),
    ("state synchronized", StateTest(frozenset({1, 3, 4, 5, 6, 8, 9, 11, 12}))),
    ("state bucket", StateTest(frozenset({3, 6, 12}))),
    ("state big", StateTest(frozenset({1, 2, 4, 5, 7, 8, 9, 10, 11}))),
    ("state all exclude bucket", StateTest(frozenset({1, 2, 4, 5, 7, 8, 9, 10, 11}))),
    ("exclude all", StateTest(frozenset())),
    ("state established exclude established", StateTest(frozenset())),
    ("state listening and state closed", And((StateTest(frozenset({10})), StateTest(frozenset({7}))))),
    # ss: leading states apply to the whole expression after them.
    (
        "state listening sport = :22 or sport = :80",
        And((StateTest(frozenset({10})), Or((SPORT22, _port("src", 80))))),
    ),
    ("state listening or sport = :22", Or((StateTest(frozenset({10})), SPORT22))),
    ("sport = :22 state listening", And((SPORT22, StateTest(frozenset({10}))))),
    ("not state listening state closed", Not(StateTest(frozenset({7, 10})))),
    ("not " * MAX_DEPTH + "sport = :22", _nested_nots(SPORT22, MAX_DEPTH)),
]


@pytest.mark.parametrize(("text", "tree"), GOOD, ids=[case[0][:40] for case in GOOD])
def test_good_expressions(text: str, tree: Node) -> None:
    assert parse_filter(text) == tree
    assert parse_filter(to_text(tree)) == tree


def test_bounds_are_reachable() -> None:
    assert parse_filter("(" * MAX_DEPTH + "sport = 1" + ")" * MAX_DEPTH) == _port("src", 1)
    assert len(parse_filter(" or ".join(f"sport = {n}" for n in range(MAX_TERMS))).items) == MAX_TERMS


# ---- The evaluator -----------------------------------------------------------------------------


def event(**fields: Any) -> dict[str, Any]:
    """A JSON line's fields: by default a TCP socket 127.0.0.1:5000 -> 10.0.0.2:22."""
    base: dict[str, Any] = {
        "pid": 100,
        "family": "AF_INET",
        "protocol": "IPPROTO_TCP",
        "state": "ESTABLISHED",
        "saddr": "127.0.0.1",
        "sport": 5000,
        "daddr": "10.0.0.2",
        "dport": 22,
        "netns": NS,
        "mark": 0,
    }
    base.update(fields)
    return base


MAPPED = {"family": "AF_INET6", "saddr": "::ffff:127.0.0.1", "daddr": "::ffff:10.0.0.2"}
V6 = {"family": "AF_INET6", "saddr": "::1", "daddr": "2001:db8::2"}
UNIX = {"family": "AF_UNIX", "protocol": "0", "state": "CLOSE", "saddr": None, "daddr": None, "sport": 0, "dport": 0}
EVALUATIONS: list[tuple[str, dict[str, Any], bool]] = [
    ("sport = :5000", {}, True),
    ("dport = :ssh", {}, True),
    ("dport != 22", {}, False),
    ("sport > 4999", {}, True),
    ("sport < 5000", {}, False),
    ("sport <= 5000", {}, True),
    ("sport >= 5001", {}, False),
    ("not ( sport = :22 or dport = :22 )", {}, False),
    ("not ( sport = :22 or dport = :22 )", {"dport": 80}, True),
    ("src 127.0.0.1", {}, True),
    ("src 127.0.0.0/8", {}, True),
    ("dst 10.0.0.0/24", {}, True),
    ("dst 10.0.1.0/24", {}, False),
    ("src 127.0.0.1:5000", {}, True),
    ("src 127.0.0.1:5001", {}, False),
    ("src 127.0.0.1", MAPPED, True),  # as ss: an IPv4 HOST matches the IPv4-mapped form
    ("dst 10.0.0.0/8", MAPPED, True),
    ("src ::ffff:127.0.0.1", MAPPED, True),
    ("src ::ffff:127.0.0.1", {}, False),  # as ss: an IPv6 HOST does not match AF_INET sockets
    ("src 0.0.0.0/0", V6, False),
    ("src ::/0", {}, False),
    ("src ::/0", MAPPED, True),
    ("src ::1 and dst 2001:db8::/32", V6, True),
    ("src 127.0.0.1", V6, False),
    ("not sport = :22", UNIX, True),
    ("sport = 0", UNIX, False),
    ("protocol tcp", UNIX, False),
    ("src 0.0.0.0/0", UNIX, False),
    ("family unix", UNIX, True),
    ("state closed", UNIX, True),
    ("family inet", {}, True),
    ("family inet6", MAPPED, True),
    ("fwmark = 0x13", {"mark": 0x13}, True),
    ("fwmark = 0x10/0xf0", {"mark": 0x13}, True),
    ("fwmark != 0x13", {"mark": 0x13}, False),
    ("fwmark = 0", {"state": "TIME_WAIT"}, True),  # a mini sock's mark reads 0
    ("state established", {}, True),
    ("state listening", {}, False),
    ("exclude established", {}, False),
    ("state connected", {}, True),
    ("state syn-recv", {"state": "NEW_SYN_RECV"}, True),
    ("state syn-recv", {"state": "SYN_RECV"}, True),
    ("state bucket", {"state": "TIME_WAIT"}, True),
    ("state big", {"state": "TIME_WAIT"}, False),
    ("protocol udp", {"protocol": "IPPROTO_UDP"}, True),
    ("protocol mptcp", {"protocol": "IPPROTO_MPTCP"}, True),
    ("protocol 200", {"protocol": "200"}, True),
    ("netns 4026531833", {}, True),
    ("netns 4026531834", {}, False),
    ("pid 100", {}, True),
    ("pid 101", {}, False),
    ("state listening sport = :5000 or dport = :22", {}, False),  # listening and (...)
    ("( state listening sport = :5000 ) or dport = :22", {}, True),
]


@pytest.mark.parametrize(("text", "fields", "expected"), EVALUATIONS, ids=[case[0] for case in EVALUATIONS])
def test_evaluate(text: str, fields: dict[str, Any], expected: bool) -> None:
    tree = parse_filter(text)
    assert evaluate(tree, event(**fields)) is expected
    assert _c_says(tree, event(**fields), random.Random(0), sys.byteorder) is expected


# ---- The C expression --------------------------------------------------------------------------

_ACCESSOR = "|".join(sorted((name for name in ACCESSORS if not name.endswith("6")), key=len, reverse=True))
_C_TOKENS = re.compile(
    rf"(?:\s+|[0-9]+U?|(?:F_SADDR6|F_DADDR6)\([0-3]\)|(?:{_ACCESSOR})|==|!=|<=|>=|<<|&&|\|\||[<>&!()])*"
)


@pytest.mark.parametrize(("text", "tree"), GOOD[:40], ids=[case[0][:40] for case in GOOD[:40]])
def test_c_is_made_of_integers_accessors_and_operators(text: str, tree: Node) -> None:
    code = to_c(tree)
    assert _C_TOKENS.fullmatch(code), code
    assert accessors_used(tree) == set(re.findall(r"F_[A-Z0-9]+", code))
    assert code.count("(") == code.count(")")


def test_addresses_compare_as_filter_addr_does() -> None:
    """Constants are u32 loads of the network-order bytes, as program.py builds FILTER_ADDR4/ADDR6_*."""
    packed = ipaddress.IPv4Address("10.1.2.3").packed
    assert f"F_SADDR4 == {int.from_bytes(packed, sys.byteorder)}U" in to_c(parse_filter("src 10.1.2.3"))
    assert f"F_SADDR4 == {int.from_bytes(packed, 'big')}U" in to_c(parse_filter("src 10.1.2.3"), "big")
    v6 = ipaddress.IPv6Address("2001:db8::1").packed
    code = to_c(parse_filter("dst 2001:db8::1"))
    for word in range(4):
        assert f"F_DADDR6({word}) == {int.from_bytes(v6[word * 4 : word * 4 + 4], sys.byteorder)}U" in code


def test_cheap_tests_come_first() -> None:
    code = to_c(parse_filter("dst ::1 and netns 4026531833 and fwmark = 1 and sport = :22 and pid 7"))
    positions = [code.index(name) for name in ("F_SPORT", "F_MARK", "F_NETNS", "F_DADDR6")]
    assert positions == sorted(positions)
    assert code.index("F_PID") < code.index("F_MARK")


def test_reads_only_what_it_needs() -> None:
    assert accessors_used(parse_filter("sport = :22")) == {"F_FAMILY", "F_SPORT"}
    assert accessors_used(parse_filter("state listening")) == {"F_STATE"}
    assert accessors_used(parse_filter("fwmark = 0/0")) == set()
    assert to_c(parse_filter("exclude all")) == "0"


FAMILY_NUMBERS = {family_name(n): n for n in range(64)}
PROTOCOL_NUMBERS = {protocol_name(AF_INET, n): n for n in range(300)}
STATE_NUMBERS = {tcp_state_name(n): n for n in range(16)}


def _c_values(fields: dict[str, Any], rng: random.Random, byteorder: str) -> dict[str, Any]:
    """What the accessors read for this event; addresses of the other family are garbage, as in a sock."""

    def words(text: str | None, size: int) -> list[int]:
        if text is None or ipaddress.ip_address(text).version != (4 if size == 4 else 6):
            return [rng.getrandbits(32) for _ in range(size // 4)]
        packed = ipaddress.ip_address(text).packed
        return [int.from_bytes(packed[i : i + 4], byteorder) for i in range(0, size, 4)]

    return {
        "F_PID": fields["pid"],
        "F_FAMILY": FAMILY_NUMBERS[fields["family"]],
        "F_STATE": STATE_NUMBERS[fields["state"]],
        "F_SPORT": fields["sport"],
        "F_DPORT": fields["dport"],
        "F_PROTOCOL": PROTOCOL_NUMBERS.get(fields["protocol"], rng.getrandbits(16)),
        "F_MARK": fields["mark"],
        "F_NETNS": fields["netns"],
        "F_SADDR4": words(fields["saddr"], 4)[0],
        "F_DADDR4": words(fields["daddr"], 4)[0],
        "F_SADDR6": words(fields["saddr"], 16),
        "F_DADDR6": words(fields["daddr"], 16),
    }


def _c_says(tree: Node, fields: dict[str, Any], rng: random.Random, byteorder: str) -> bool:
    """The C expression run with C's meaning in Python: accessors replaced by the event's values."""
    values = _c_values(fields, rng, byteorder)

    def value(match: re.Match[str]) -> str:
        read = values[match.group(1)]
        return str(read[int(match.group(2))] if match.group(2) else read)

    code = to_c(tree, byteorder)
    assert _C_TOKENS.fullmatch(code), code
    python = re.sub(r"\b(F_[A-Z0-9]+)(?:\(([0-3])\))?", value, code)
    python = re.sub(r"\b([0-9]+)U\b", r"\1", python).replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    return bool(eval(python, {"__builtins__": {}}))


# ---- Random trees ------------------------------------------------------------------------------

PORTS = (0, 22, 80, 443, 1024, 5000, 65535)
V4S = ("127.0.0.1", "10.0.0.1", "10.1.2.3", "192.168.1.1", "0.0.0.0")
V6S = ("::1", "::", "fe80::1", "2001:db8::5", "::ffff:10.0.0.1", "::ffff:127.0.0.1")
MARKS = (0, 0x13, 0x10, 0xFF, 0xFFFFFFFF)
PROTOCOLS = (1, 6, 17, 58, 132, 262)
NETNS = (NS, NS + 1)
PIDS = (1, 100, 4242)
ATOMS = ({1}, {2}, {3, 12}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11})


def random_leaf(rng: random.Random) -> Node:
    kind = rng.randrange(9)
    end = rng.choice(("src", "dst"))
    if kind <= 1:
        return PortTest(end, rng.choice(("==", "!=", "<", "<=", ">", ">=")), rng.choice(PORTS))
    if kind <= 3:
        v6 = rng.random() < 0.5
        bits = 128 if v6 else 32
        prefix = rng.choice((0, 8, 16, 24, 31, 32) if not v6 else (0, 16, 64, 96, 104, 127, 128))
        network = int(ipaddress.ip_address(rng.choice(V6S if v6 else V4S)))
        masked = network & (((1 << prefix) - 1) << (bits - prefix))
        return AddrTest(end, AF_INET6 if v6 else AF_INET, masked, prefix)
    if kind == 4:
        mask = rng.choice((0xFFFFFFFF, 0xF0, 0x0F, 0))
        return MarkTest(rng.choice(MARKS) & mask, mask)
    if kind == 5:
        return ProtocolTest(rng.choice(PROTOCOLS))
    if kind == 6:
        return FamilyTest(rng.choice((AF_INET, AF_INET6, AF_UNIX, AF_NETLINK)))
    if kind == 7:
        return NetnsTest(rng.choice(NETNS)) if rng.random() < 0.5 else PidTest(rng.choice(PIDS))
    chosen = [atom for atom in ATOMS if rng.random() < 0.3]
    return StateTest(frozenset().union(*chosen))


def random_tree(rng: random.Random, depth: int = 3) -> Node:
    if depth == 0 or rng.random() < 0.3:
        return random_leaf(rng)
    if rng.random() < 0.2:
        return Not(random_tree(rng, depth - 1))
    kind = rng.choice((And, Or))
    items: list[Node] = []
    for _ in range(rng.randint(2, 4)):
        item = random_tree(rng, depth - 1)
        items.extend(item.items if isinstance(item, kind) else (item,))  # as the parser flattens
    return kind(tuple(items))


def random_event(rng: random.Random) -> dict[str, Any]:
    family = rng.choice((AF_INET, AF_INET, AF_INET6, AF_INET6, AF_UNIX, AF_NETLINK))
    fields = event(
        pid=rng.choice(PIDS),
        family=family_name(family),
        state=tcp_state_name(rng.randint(1, 12)),
        sport=rng.choice(PORTS),
        dport=rng.choice(PORTS),
        mark=rng.choice(MARKS),
        netns=rng.choice(NETNS),
    )
    if family in (AF_INET, AF_INET6):
        pool = V4S if family == AF_INET else V6S
        fields.update(saddr=rng.choice(pool), daddr=rng.choice(pool))
        fields["protocol"] = protocol_name(family, rng.choice(PROTOCOLS))
    else:
        fields.update(saddr=None, daddr=None, protocol=protocol_name(family, rng.randrange(4)))
    return fields


def test_random_trees_print_and_parse_back() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        tree = random_tree(rng)
        assert parse_filter(to_text(tree)) == tree, to_text(tree)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_c_agrees_with_evaluate(byteorder: str) -> None:
    rng = random.Random(1015)
    outcomes = []
    for _ in range(2500):
        tree, fields = random_tree(rng), random_event(rng)
        expected = evaluate(tree, fields)
        assert _c_says(tree, fields, rng, byteorder) is expected, (to_text(tree), fields)
        outcomes.append(expected)
    assert 0.1 < sum(outcomes) / len(outcomes) < 0.9  # both answers are exercised


def _ports(end: str, ports: range) -> str:
    return " or ".join(f"{end} = :{port}" for port in ports)


def test_a_long_or_of_ports_is_one_set_lookup_per_end() -> None:
    short = parse_filter(_ports("sport", range(1, PORT_SET_MIN)))
    assert port_sets(short) == () and "port_in_set" not in to_c(short)
    ports = range(100, 100 + PORT_SET_MIN)
    both = parse_filter(f"{_ports('sport', ports)} or {_ports('dport', ports)} or src 10.0.0.0/8")
    assert port_sets(both) == (frozenset(ports),)  # one set for both ends
    text = to_c(both)
    assert "port_in_set_0(F_SPORT)" in text and "port_in_set_0(F_DPORT)" in text and "F_SADDR4" in text
    assert "== 100)" not in text  # no comparison left for the listed ports


def test_sets_beyond_the_programs_maps_stay_comparisons() -> None:
    groups = [range(base, base + PORT_SET_MIN) for base in range(1000, 1000 + 100 * (MAX_PORT_SETS + 1), 100)]
    tree = parse_filter(" and ".join(f"( {_ports('sport', group)} )" for group in groups))
    assert port_sets(tree) == tuple(frozenset(group) for group in groups[:MAX_PORT_SETS])
    assert f"(F_SPORT == {groups[-1][0]})" in to_c(tree)


def test_sets_change_nothing_the_evaluator_decides() -> None:
    ports = range(2000, 2000 + PORT_SET_MIN)
    tree = parse_filter(f"not ( {_ports('dport', ports)} )")
    assert port_sets(tree) == (frozenset(ports),)
    base = {"family": "AF_INET", "sport": 1, "saddr": "127.0.0.1", "daddr": "127.0.0.1"}
    assert not evaluate(tree, {**base, "dport": 2005}) and evaluate(tree, {**base, "dport": 3000})


def test_a_long_or_of_prefixes_is_one_trie_lookup_per_end_and_family() -> None:
    v4 = " or ".join(f"src 10.{i}.0.0/16" for i in range(PREFIX_SET_MIN))
    v6 = " or ".join(f"src 2001:db8:{i:x}::/48" for i in range(PREFIX_SET_MIN))
    tree = parse_filter(f"{v4} or {v6} or src 192.0.2.1")
    sets = lookup_sets(tree)
    assert len(sets.prefixes4) == len(sets.prefixes6) == 1 and not sets.ports
    assert (int(ipaddress.IPv4Address("10.3.0.0")), 16) in sets.prefixes4[0]
    text = to_c(tree)
    assert "in_prefix4_set_0(F_SADDR4)" in text and "in_prefix4_set_0(F_SADDR6(3))" in text  # and IPv4-mapped
    assert "in_prefix6_set_0(F_SADDR6(0), F_SADDR6(1), F_SADDR6(2), F_SADDR6(3))" in text
    assert len(sets.prefixes4[0]) == PREFIX_SET_MIN + 1 and "F_SADDR4 ==" not in text  # 192.0.2.1/32 joins the set
    short = parse_filter(" or ".join(f"dst 10.{i}.0.0/16" for i in range(PREFIX_SET_MIN - 1)))
    assert lookup_sets(short) == Sets.empty()


def test_prefix_sets_change_nothing_the_evaluator_decides() -> None:
    tree = parse_filter(" or ".join(["src 0.0.0.0/0", *(f"src 10.{i}.0.0/16" for i in range(PREFIX_SET_MIN))]))
    assert len(lookup_sets(tree).prefixes4) == 1
    base = {"family": "AF_INET6", "sport": 1, "dport": 2, "daddr": "::1"}
    assert evaluate(tree, {**base, "saddr": "::ffff:192.0.2.1"})  # /0 takes every IPv4 address, mapped too
    assert not evaluate(tree, {**base, "saddr": "2001:db8::1"})
