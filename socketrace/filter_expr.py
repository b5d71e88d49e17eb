"""``--filter EXPR``: ss(8)'s filter language, parsed once, evaluated in Python, compiled to one C expression.

Examples, as ss takes them::

    not ( sport = :22 or dport = :22 )
    state established ( dport = :ssh or sport = :ssh )
    dst 10.0.0.0/8 and dport >= 1024
    src [::1]:5000 or src 127.0.0.1:5000
    state fin-wait-1 ( sport = :http or sport = :https ) dst 193.233.7/24
    fwmark = 0x10/0xf0 and not family inet6
    protocol udp and netns 4026531833 and pid 1234

Grammar (``|`` separates alternatives, ``[ ]`` is optional)::

    FILTER  := [ STATES ] EXPR         leading states apply to the whole EXPR, as in ss
    EXPR    := UNARY { [ and ] UNARY } { or UNARY }
    UNARY   := { not } PRIMARY
    PRIMARY := ( EXPR ) | TERM
    TERM    := src|dst [ = | != ] HOST
             | sport|dport [ OP ] [:]PORT
             | fwmark [ = | != ] MARK[/MASK]
             | protocol [ = | != ] NAME|NUMBER
             | family [ = | != ] inet|inet6|unix|netlink|packet
             | netns [ = | != ] INODE
             | pid [ = | != ] TGID
             | STATES
    STATES  := ( state|exclude NAME ) { state|exclude NAME }
    HOST    := IPV4[/PREFIX][:PORT] | IPV6[/PREFIX] | [IPV6[/PREFIX]][:PORT]
    OP      := = == eq | != ne neq | < lt | <= le leq | > gt | >= ge geq

``and`` is also ``&&`` and ``&``; ``or`` is ``||`` and ``|``; ``not`` is ``!``; two terms side by
side are joined by ``and``. ``not`` binds tightest, then ``and``, then ``or``, as ss(8) documents.
ss itself (iproute2 6.1) evaluates ``and`` and ``or`` left to right with equal precedence, so
``a or b and c`` means one thing in its manual and another in the program: an ``and`` (written or
implied) after an ``or`` at the same level is an error here, which asks for parentheses. Every
expression accepted therefore means the same under both readings.

Terms (``src`` and ``sport`` are the socket's local end, ``dst`` and ``dport`` its remote end):

- ``src``/``dst`` HOST: an address literal, with a prefix length for a network (``10.0.0.0/8``;
  a shortened IPv4 network such as ``193.233.7/24`` needs its prefix). An IPv4 HOST also matches
  AF_INET6 sockets whose address is its IPv4-mapped form (``::ffff:a.b.c.d``), as ss and
  ``--filter-addr`` do; an IPv6 HOST (``::ffff:a.b.c.d`` included) only AF_INET6 sockets. IPv6
  addresses are written bare (no port then) or in brackets. ``HOST:PORT`` also tests the port of
  the same end. socketrace resolves no names: a HOST that is not an address literal is an error.
- ``sport``/``dport`` OP PORT: a number 0-65535 or a service name, looked up (in /etc/services) once,
  while parsing.
- ``fwmark`` MARK[/MASK]: ``sk_mark & MASK == MARK`` (MASK defaults to 0xffffffff; decimal or 0x hex).
  A time-wait or request sock has no mark: it reads 0, as its JSON line shows.
- ``state``/``exclude`` NAME: ss's TCP states ``established syn-sent syn-recv fin-wait-1 fin-wait-2
  time-wait closed close-wait last-ack listening closing`` and groups ``all``, ``connected`` (all but
  listening and closed), ``synchronized`` (connected but syn-sent), ``bucket`` (syn-recv, time-wait)
  and ``big`` (all but bucket). A run of them is one term, folded left to right as ss does: it
  starts empty if it begins with ``state`` (which adds), from ``all`` if with ``exclude`` (which
  removes). ``syn-recv`` covers TCP_SYN_RECV and request socks (TCP_NEW_SYN_RECV), both of which ss
  lists as SYN-RECV. States are ``skc_state``, which every family numbers as TCP does.

Words ss lacks: ``protocol`` (tcp, udp, icmp, icmpv6, sctp, udplite, mptcp or a number 0-65535),
``family``, ``netns`` (a network namespace inode, as ``--filter-netns`` takes it), ``pid`` (the
thread group id of the current task, as ``--filter-pid``), and ``!=`` after ``src``/``dst``.
Unlike ss, an empty state set matches nothing, and a port, address or protocol term is false for
sockets that are not AF_INET/AF_INET6 (so ``not sport = :22`` holds for them). Not supported:
ss's ``*`` wildcards, ``FAMILY:`` prefixes, ``dev``, ``cgroup`` and ``autobound``.

Bounds: at most MAX_TERMS terms and MAX_DEPTH levels of parentheses and ``not``. Every error is a
one-line :class:`FilterSyntaxError` naming what was expected and the 1-based column.

The tree is made of frozen dataclasses. :func:`evaluate` tests it against a decoded event (the
fields of a JSON line); :func:`to_c` compiles it to one C expression over the accessors of
:data:`ACCESSORS`, made only of integers validated here, accessor names, operators and
parentheses: user text never reaches the compiler.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Union, cast

from .options import PROTOCOL_NUMBERS, U32_MAX, OptionError, parse_protocol
from .symbols import AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, family_name, protocol_name, tcp_state_name

__all__ = [
    "ACCESSORS",
    "ALL_STATES",
    "MAX_DEPTH",
    "MAX_TERMS",
    "AddrTest",
    "And",
    "CompiledFilter",
    "FamilyTest",
    "FilterSyntaxError",
    "MarkTest",
    "NetnsTest",
    "Node",
    "Not",
    "Or",
    "PidTest",
    "PortTest",
    "ProtocolTest",
    "Sets",
    "StateTest",
    "accessors_used",
    "compile_filter",
    "evaluate",
    "lookup_sets",
    "parse_filter",
    "port_sets",
    "to_c",
    "to_text",
]

MAX_DEPTH = 32  # levels of parentheses and `not`
MAX_TERMS = 1024
# An `or` of this many equal-port tests of one end or more becomes one hash-set lookup in the kernel;
# the program declares MAX_PORT_SETS sets (port_set_0..3 in bpf/socketrace.c), each of up to PORT_SET_MAX.
PORT_SET_MIN = 16
MAX_PORT_SETS = 4
PORT_SET_MAX = 65536
# Likewise an `or` of this many prefixes of one end and family becomes one longest-prefix-match
# lookup (prefix4_set_0/1, prefix6_set_0/1 in bpf/socketrace.c).
PREFIX_SET_MIN = 16
MAX_PREFIX_SETS = 2  # per family

# What the C expression reads, each defined by the BPF program, with its cost rank (the order in
# which an `and` or `or` tests them) and what it is. Ports are in host order; addresses are u32
# loads of their network-order bytes, as FILTER_ADDR4/FILTER_ADDR6_* compare them, so constants
# are built with the target's byte order (to_c's `byteorder`).
ACCESSORS: dict[str, tuple[int, str]] = {
    "F_PID": (1, "bpf_get_current_pid_tgid() >> 32"),
    "F_FAMILY": (1, "skc_family, from the sock's head copy"),
    "F_STATE": (1, "skc_state, from the head copy"),
    "F_SPORT": (1, "the local port in host order, as local_port() shows it"),
    "F_DPORT": (1, "skc_dport in host order, from the head copy"),
    "F_SADDR4": (1, "skc_rcv_saddr as a u32 load, from the head copy"),
    "F_DADDR4": (1, "skc_daddr as a u32 load, from the head copy"),
    "F_PROTOCOL": (2, "sk_protocol of a full sock, IPPROTO_TCP for a mini sock"),
    "F_MARK": (2, "sk_mark of a full sock, 0 for a mini sock"),
    "F_NETNS": (3, "sock_net(sk)->ns.inum"),
    "F_SADDR6": (4, "F_SADDR6(i): word i (0-3) of skc_v6_rcv_saddr as a u32 load"),
    "F_DADDR6": (4, "F_DADDR6(i): word i (0-3) of skc_v6_daddr as a u32 load"),
}

# TCP states (include/net/tcp_states.h) as ss names them; syn-recv is also a request sock's state.
_STATE_ATOMS: dict[str, frozenset[int]] = {
    "established": frozenset({1}),
    "syn-sent": frozenset({2}),
    "syn-recv": frozenset({3, 12}),  # TCP_SYN_RECV, TCP_NEW_SYN_RECV
    "fin-wait-1": frozenset({4}),
    "fin-wait-2": frozenset({5}),
    "time-wait": frozenset({6}),
    "closed": frozenset({7}),
    "close-wait": frozenset({8}),
    "last-ack": frozenset({9}),
    "listening": frozenset({10}),
    "closing": frozenset({11}),
}
ALL_STATES = frozenset().union(*_STATE_ATOMS.values())
_CONNECTED = ALL_STATES - _STATE_ATOMS["listening"] - _STATE_ATOMS["closed"]
_BUCKET = _STATE_ATOMS["syn-recv"] | _STATE_ATOMS["time-wait"]
_STATE_NAMES: dict[str, frozenset[int]] = {
    **_STATE_ATOMS,
    "all": ALL_STATES,
    "connected": _CONNECTED,
    "synchronized": _CONNECTED - _STATE_ATOMS["syn-sent"],
    "bucket": _BUCKET,
    "big": ALL_STATES - _BUCKET,
}
_FAMILIES = {"inet": AF_INET, "inet6": AF_INET6, "unix": AF_UNIX, "netlink": AF_NETLINK, "packet": AF_PACKET}
_FAMILY_WORDS = {number: word for word, number in _FAMILIES.items()}

# ss's spellings of each comparison -> the C operator the tree keeps.
_COMPARISONS = {
    **dict.fromkeys(("=", "==", "eq"), "=="),
    **dict.fromkeys(("!=", "ne", "neq"), "!="),
    **dict.fromkeys(("<", "lt"), "<"),
    **dict.fromkeys(("<=", "le", "leq"), "<="),
    **dict.fromkeys((">", "gt"), ">"),
    **dict.fromkeys((">=", "ge", "geq"), ">="),
}
_AND_WORDS = frozenset({"and", "&&", "&"})
_OR_WORDS = frozenset({"or", "||", "|"})
_NOT_WORDS = frozenset({"not", "!"})
_PUNCTUATION = frozenset({"(", ")", "=", "==", "!=", "<", "<=", ">", ">=", "!", "&", "&&", "|", "||"})
_TOKEN = re.compile(r"&&|\|\||==|!=|<=|>=|[()!<>=&|]|[^\s()!<>=&|]+")
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*")
_IPV4_PARTS = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){0,3}")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10}")
_SHOWN = 40  # characters of a bad word an error message quotes


class FilterSyntaxError(OptionError):
    """The --filter expression is invalid; the message is one line with the column."""


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class PortTest:
    """``end`` is "src" (local) or "dst" (remote); ``op`` a C comparison operator."""

    end: str
    op: str
    port: int


@dataclass(frozen=True)
class AddrTest:
    """``network`` is the address as an integer, already masked to ``prefix`` bits."""

    end: str
    family: int  # AF_INET or AF_INET6
    network: int
    prefix: int


@dataclass(frozen=True)
class MarkTest:
    value: int
    mask: int


@dataclass(frozen=True)
class ProtocolTest:
    protocol: int


@dataclass(frozen=True)
class FamilyTest:
    family: int


@dataclass(frozen=True)
class NetnsTest:
    inode: int


@dataclass(frozen=True)
class PidTest:
    pid: int


@dataclass(frozen=True)
class StateTest:
    states: frozenset[int]


Node = Union[And, Or, Not, PortTest, AddrTest, MarkTest, ProtocolTest, FamilyTest, NetnsTest, PidTest, StateTest]


def _joined(kind: type[And] | type[Or], items: list[Node]) -> Node:
    """One And or Or of the items, nested ones of the same kind flattened, a single item as itself."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def _negated(node: Node, negate: bool) -> Node:
    return Not(node) if negate else node


class _Token(NamedTuple):
    text: str
    column: int  # 1-based


# ---- Parsing -----------------------------------------------------------------------------------


def parse_filter(text: str) -> Node:
    """The tree of a --filter expression; a FilterSyntaxError if it is not one."""
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over the tokens; each term word's parser is an entry of _TERMS."""

    def __init__(self, text: str) -> None:
        self._end_column = len(text) + 1
        self._tokens = [_Token(match.group(), match.start() + 1) for match in _TOKEN.finditer(text)]
        self._pos = 0
        self._depth = 0
        self._terms = 0

    def parse(self) -> Node:
        if not self._tokens:
            raise FilterSyntaxError("--filter: empty expression")
        tree = self._leading_states() or self._expression()
        extra = self._peek()
        if extra is not None:  # the expression stops only at the end or at a ')'
            raise self._error("unbalanced ')'", extra)
        return tree

    def _leading_states(self) -> Node | None:
        """ss's ``[ state STATE-FILTER ] [ EXPRESSION ]``: states followed directly by a term apply to
        the whole expression after them. Followed by an operator, they are an ordinary term."""
        first = self._peek()
        if first is None or first.text not in ("state", "exclude"):
            return None
        states = self._primary()
        following = self._peek()
        if following is None:
            return states
        if following.text in _AND_WORDS | _OR_WORDS | {")"}:
            self._pos, self._terms = 0, 0
            return None
        return _joined(And, [states, self._expression()])

    def _expression(self) -> Node:
        disjuncts: list[Node] = []
        conjuncts = [self._unary()]
        while True:
            token = self._peek()
            if token is None or token.text == ")":
                break
            if token.text in _OR_WORDS:
                self._pos += 1
                disjuncts.append(_joined(And, conjuncts))
                conjuncts = [self._unary()]
                continue
            if disjuncts:
                raise self._error(
                    "an 'and' (written or implied) after an 'or' needs parentheses: ss(8) and ss group it differently",
                    token,
                )
            if token.text in _AND_WORDS:
                self._pos += 1
            conjuncts.append(self._unary())
        disjuncts.append(_joined(And, conjuncts))
        return _joined(Or, disjuncts)

    def _unary(self) -> Node:
        token = self._peek()
        if token is not None and token.text in _NOT_WORDS:
            self._pos += 1
            with self._nested(token):
                return Not(self._unary())
        return self._primary()

    def _primary(self) -> Node:
        token = self._take("a term")
        if token.text == "(":
            with self._nested(token):
                tree = self._expression()
            closing = self._peek()
            if closing is None:
                raise self._error(f"expected ')' closing the '(' of column {token.column}")
            self._pos += 1
            return tree
        term = _TERMS.get(token.text)
        if term is None:
            raise self._error(f"expected a term ({', '.join(_TERMS)}), found {_shown(token.text)}", token)
        self._count_term(token)
        return term(self, token)

    # ---- Terms (entries of _TERMS) ----

    def _address(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        host = self._value(f"an address after {context!r}")
        return _negated(self._host(word.text, host, context), negate)

    def _port(self, word: _Token) -> Node:
        end, op, context = ("src" if word.text == "sport" else "dst"), "==", word.text
        token = self._peek()
        if token is not None and token.text in _COMPARISONS:
            self._pos += 1
            op, context = _COMPARISONS[token.text], f"{word.text} {token.text}"
        port = self._value(f"a port after {context!r}")
        return PortTest(end, op, self._port_number(port.text, port.column, context))

    def _mark(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        token = self._value(f"a mark after {context!r}")
        value_text, slash, mask_text = token.text.partition("/")
        value = self._u32(value_text, token.column, f"a mark after {context!r}")
        mask = self._u32(mask_text, token.column + len(value_text) + 1, "a mask after '/'") if slash else U32_MAX
        if value & ~mask:
            raise self._error(f"fwmark {value:#x}/{mask:#x} can never match: the mark has bits outside the mask", token)
        return _negated(MarkTest(value, mask), negate)

    def _protocol(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        token = self._value(f"a protocol after {context!r}")
        try:
            protocol = parse_protocol(token.text)
        except OptionError:
            known = ", ".join(PROTOCOL_NUMBERS)
            raise self._error(
                f"expected a protocol ({known}) or a number 0-65535 after {context!r}, found {_shown(token.text)}",
                token,
            ) from None
        return _negated(ProtocolTest(protocol), negate)

    def _family(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        token = self._value(f"a family after {context!r}")
        if token.text not in _FAMILIES:
            names = ", ".join(_FAMILIES)
            raise self._error(f"expected a family ({names}) after {context!r}, found {_shown(token.text)}", token)
        return _negated(FamilyTest(_FAMILIES[token.text]), negate)

    def _netns(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        token = self._value(f"a namespace inode after {context!r}")
        inode = self._u32(token.text, token.column, f"a namespace inode after {context!r}")
        if inode == 0:
            raise self._error("netns 0 is no namespace's inode", token)
        return _negated(NetnsTest(inode), negate)

    def _pid(self, word: _Token) -> Node:
        negate, context = self._equality(word)
        token = self._value(f"a process id after {context!r}")
        return _negated(PidTest(self._u32(token.text, token.column, f"a process id after {context!r}")), negate)

    def _states(self, word: _Token) -> Node:
        states: frozenset[int] | None = None
        while True:
            name = self._value(f"a state after {word.text!r}")
            named = _STATE_NAMES.get(name.text)
            if named is None:
                names = ", ".join(_STATE_NAMES)
                raise self._error(f"expected a state ({names}) after {word.text!r}, found {_shown(name.text)}", name)
            if states is None:
                states = frozenset() if word.text == "state" else ALL_STATES
            states = states | named if word.text == "state" else states - named
            following = self._peek()
            if following is None or following.text not in ("state", "exclude"):
                return StateTest(states)
            self._pos += 1
            self._count_term(following)
            word = following

    # ---- Pieces of terms ----

    def _host(self, end: str, token: _Token, context: str) -> Node:
        """``HOST[:PORT]``: an AddrTest, and with a port the PortTest of the same end."""
        text, port_at = token.text, -1
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise self._error("expected ']' closing the '['", token)
            if close + 1 < len(text) and text[close + 1] != ":":
                raise self._error("expected ':PORT' or nothing after ']'", self._at(token, close + 1))
            address, address_at = text[1:close], 1
            port_at = close + 2 if close + 1 < len(text) else -1
        elif text.count(":") == 1:  # IPv4:PORT; IPv6 has two colons or more
            address, address_at, port_at = text[: text.index(":")], 0, text.index(":") + 1
        else:
            address, address_at = text, 0
        test = self._network(end, address, self._at(token, address_at), context)
        if port_at < 0:
            return test
        port = self._port_number(text[port_at:], token.column + port_at, f"{context} {text[:port_at]}")
        return _joined(And, [test, PortTest(end, "==", port)])

    def _network(self, end: str, text: str, token: _Token, context: str) -> AddrTest:
        address, slash, prefix_text = text.partition("/")
        family, bits = (AF_INET6, 128) if ":" in address else (AF_INET, 32)
        prefix = bits
        if slash:
            prefix_token = self._at(token, len(address) + 1)
            if not re.fullmatch(r"[0-9]{1,3}", prefix_text):
                raise self._error(f"expected a prefix length after '/', found {_shown(prefix_text)}", prefix_token)
            prefix = int(prefix_text)
            if prefix > bits:
                version = 6 if family == AF_INET6 else 4
                raise self._error(
                    f"prefix /{prefix} is longer than an IPv{version} address ({bits} bits)", prefix_token
                )
        value = _ipv6_value(address) if family == AF_INET6 else _ipv4_value(address)
        if value is None:
            raise self._error(
                f"expected an IPv4 or IPv6 address after {context!r}, found {_shown(address)} "
                "(socketrace resolves no names)",
                token,
            )
        number, parts = value
        if parts * 8 < prefix:
            raise self._error(f"{address!r} is a shortened IPv4 network: give its prefix, e.g. /{parts * 8}", token)
        return AddrTest(end, family, number & _prefix_mask(prefix, bits), prefix)

    def _port_number(self, text: str, column: int, context: str) -> int:
        """A port number or service name, with or without ss's leading ':'."""
        name = text[1:] if text.startswith(":") else text
        where = _Token(text, column)
        if re.fullmatch(r"[0-9]{1,5}", name):
            if int(name) > 0xFFFF:
                raise self._error(f"port {name} is out of range 0-65535", where)
            return int(name)
        if not _SERVICE.fullmatch(name):
            raise self._error(f"expected a port after {context!r}, found {_shown(text)}", where)
        try:
            return socket.getservbyname(name)
        except OSError:
            raise self._error(f"unknown service {_shown(name)} (not in /etc/services)", where) from None

    def _u32(self, text: str, column: int, expected: str) -> int:
        """A decimal or 0x hexadecimal number that fits in 32 bits."""
        where = _Token(text, column)
        if not _NUMBER.fullmatch(text):
            raise self._error(f"expected {expected}, found {_shown(text)}", where)
        value = int(text, 16 if text[:2].lower() == "0x" else 10)
        if value > U32_MAX:
            raise self._error(f"{text} does not fit in 32 bits", where)
        return value

    def _equality(self, word: _Token) -> tuple[bool, str]:
        """An optional '=' or '!=' after ``word``: whether it negates, and the text so far for messages."""
        token = self._peek()
        if token is not None and _COMPARISONS.get(token.text) in ("==", "!="):
            self._pos += 1
            return _COMPARISONS[token.text] == "!=", f"{word.text} {token.text}"
        return False, word.text

    # ---- Tokens ----

    def _peek(self) -> _Token | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            after = f" after {self._tokens[self._pos - 1].text!r}" if self._pos else ""
            raise self._error(f"expected {expected}{after}")
        self._pos += 1
        return token

    def _value(self, expected: str) -> _Token:
        """The word a term needs next: not an operator, parenthesis or logic word."""
        token = self._peek()
        if token is None:
            raise self._error(f"expected {expected}")
        if token.text in _PUNCTUATION or token.text in _AND_WORDS | _OR_WORDS | _NOT_WORDS:
            raise self._error(f"expected {expected}, found {_shown(token.text)}", token)
        self._pos += 1
        return token

    def _count_term(self, token: _Token) -> None:
        self._terms += 1
        if self._terms > MAX_TERMS:
            raise self._error(f"more than {MAX_TERMS} terms", token)

    @contextmanager
    def _nested(self, token: _Token) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._error(f"nested deeper than {MAX_DEPTH} levels of parentheses and 'not'", token)
        try:
            yield
        finally:
            self._depth -= 1

    @staticmethod
    def _at(token: _Token, offset: int) -> _Token:
        """The part of a word from ``offset`` on, for a message's column."""
        return _Token(token.text[offset:], token.column + offset)

    def _error(self, message: str, token: _Token | None = None) -> FilterSyntaxError:
        column = token.column if token is not None else self._end_column
        return FilterSyntaxError(f"--filter: {message} (column {column})")


# Each term's word -> its parser. A new term (e.g. `cgroup PATH`) is one entry and one method.
_TERMS: dict[str, Callable[[_Parser, _Token], Node]] = {
    "src": _Parser._address,
    "dst": _Parser._address,
    "sport": _Parser._port,
    "dport": _Parser._port,
    "fwmark": _Parser._mark,
    "protocol": _Parser._protocol,
    "family": _Parser._family,
    "netns": _Parser._netns,
    "pid": _Parser._pid,
    "state": _Parser._states,
    "exclude": _Parser._states,
}


def _shown(text: str) -> str:
    """A word quoted for a one-line message, cut if long."""
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _prefix_mask(prefix: int, bits: int) -> int:
    return ((1 << prefix) - 1) << (bits - prefix)


def _ipv4_value(text: str) -> tuple[int, int] | None:
    """A dotted IPv4 address, maybe shortened as ss allows (``10.1`` is 10.1.0.0): value and parts given."""
    if not _IPV4_PARTS.fullmatch(text):
        return None
    parts = [int(part) for part in text.split(".")]
    if max(parts) > 255:
        return None
    return int.from_bytes(bytes(parts + [0] * (4 - len(parts))), "big"), len(parts)


def _ipv6_value(text: str) -> tuple[int, int] | None:
    """An IPv6 address without a zone: its value, and 16 parts (it is never shortened)."""
    if "%" in text:
        return None
    try:
        return int(ipaddress.IPv6Address(text)), 16
    except ValueError:
        return None


# ---- Printing ----------------------------------------------------------------------------------


def to_text(tree: Node) -> str:
    """The tree as an expression parse_filter() reads back to the same tree."""
    if isinstance(tree, (And, Or)):
        inner = Or if isinstance(tree, And) else And
        word = " and " if isinstance(tree, And) else " or "
        return word.join(f"( {to_text(item)} )" if isinstance(item, inner) else to_text(item) for item in tree.items)
    if isinstance(tree, Not):
        item = tree.item
        return f"not ( {to_text(item)} )" if isinstance(item, (And, Or)) else f"not {to_text(item)}"
    return _leaf_text(tree)


def _leaf_text(leaf: Node) -> str:
    if isinstance(leaf, PortTest):
        op = "=" if leaf.op == "==" else leaf.op
        return f"{'sport' if leaf.end == 'src' else 'dport'} {op} :{leaf.port}"
    if isinstance(leaf, AddrTest):
        address = ipaddress.ip_address(leaf.network) if leaf.family == AF_INET else ipaddress.IPv6Address(leaf.network)
        return f"{leaf.end} {address}/{leaf.prefix}"
    if isinstance(leaf, MarkTest):
        return f"fwmark = {leaf.value:#x}/{leaf.mask:#x}"
    if isinstance(leaf, ProtocolTest):
        return f"protocol {leaf.protocol}"
    if isinstance(leaf, FamilyTest):
        return f"family {_FAMILY_WORDS[leaf.family]}"
    if isinstance(leaf, NetnsTest):
        return f"netns {leaf.inode}"
    if isinstance(leaf, PidTest):
        return f"pid {leaf.pid}"
    assert isinstance(leaf, StateTest)
    names = [name for name, states in _STATE_ATOMS.items() if states <= leaf.states]
    return " ".join(f"state {name}" for name in names) or "exclude all"


# ---- Evaluating a decoded event ----------------------------------------------------------------


def evaluate(tree: Node, event: Mapping[str, Any]) -> bool:
    """Does an event, as its JSON line has it, pass the filter? The same answer as the C expression."""
    if isinstance(tree, And):
        return all(evaluate(item, event) for item in tree.items)
    if isinstance(tree, Or):
        return any(evaluate(item, event) for item in tree.items)
    if isinstance(tree, Not):
        return not evaluate(tree.item, event)
    family = _number(event["family"], family_name, 0x10000)
    inet = family in (AF_INET, AF_INET6)
    if isinstance(tree, PortTest):
        return inet and _compare(event["sport" if tree.end == "src" else "dport"], tree.op, tree.port)
    if isinstance(tree, AddrTest):
        return inet and _address_matches(tree, event["saddr" if tree.end == "src" else "daddr"])
    if isinstance(tree, MarkTest):
        return event["mark"] & tree.mask == tree.value
    if isinstance(tree, ProtocolTest):
        return inet and _number(event["protocol"], _ip_protocol_name, 0x10000) == tree.protocol
    if isinstance(tree, FamilyTest):
        return family == tree.family
    if isinstance(tree, NetnsTest):
        return event["netns"] == tree.inode
    if isinstance(tree, PidTest):
        return event["pid"] == tree.pid
    assert isinstance(tree, StateTest)
    return _number(event["state"], tcp_state_name, 0x100) in tree.states


def _compare(left: int, op: str, right: int) -> bool:
    return {
        "==": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def _address_matches(test: AddrTest, text: str) -> bool:
    """An IPv4 test also takes an IPv4-mapped IPv6 address; an IPv6 test only IPv6 addresses."""
    address = ipaddress.ip_address(text)
    if test.family == AF_INET and isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.version != (6 if test.family == AF_INET6 else 4):
        return False
    return int(address) & _prefix_mask(test.prefix, address.max_prefixlen) == test.network


def _ip_protocol_name(protocol: int) -> str:
    return protocol_name(AF_INET, protocol)


def _number(value: int | str, name_of: Callable[[int], str], limit: int) -> int:
    """A JSON field back to its number: a name as socketrace prints it, or the digits it prints otherwise."""
    if isinstance(value, int):
        return value
    return int(value) if value.isdigit() else _names(name_of, limit)[value]


@functools.cache
def _names(name_of: Callable[[int], str], limit: int) -> dict[str, int]:
    return {name_of(number): number for number in range(limit)}


# ---- Compiling to C ----------------------------------------------------------------------------

_INET = ("(F_FAMILY == 2 || F_FAMILY == 10)", frozenset({"F_FAMILY"}))


class _C(NamedTuple):
    """A compiled subtree: its text (always parenthesised or atomic) and the accessors it reads."""

    text: str
    reads: frozenset[str]

    @property
    def cost(self) -> int:
        return max((ACCESSORS[name][0] for name in self.reads), default=0)


class CompiledFilter(NamedTuple):
    """The tree as the program takes it: one C expression over ACCESSORS (true when the sock passes),
    the accessors it reads (the program reads only those fields), and the sets its lookups look in."""

    text: str
    reads: frozenset[str]
    sets: Sets


class Sets(NamedTuple):
    """What the expression's lookups look in, by index: the program's port_set_N, prefix4_set_N and
    prefix6_set_N maps hold them. A prefix is (network as an int, prefix length)."""

    ports: list[frozenset[int]]
    prefixes4: list[frozenset[tuple[int, int]]]
    prefixes6: list[frozenset[tuple[int, int]]]

    @classmethod
    def empty(cls) -> Sets:
        return cls([], [], [])


def compile_filter(tree: Node, byteorder: str = sys.byteorder) -> CompiledFilter:
    """The tree compiled once for the program; ``byteorder`` is the BPF target's."""
    sets = Sets.empty()
    compiled = _compile(tree, False, byteorder, sets)
    return CompiledFilter(compiled.text, compiled.reads, sets)


def to_c(tree: Node, byteorder: str = sys.byteorder) -> str:
    """compile_filter's C expression alone."""
    return compile_filter(tree, byteorder).text


def accessors_used(tree: Node) -> frozenset[str]:
    """compile_filter's accessors alone."""
    return compile_filter(tree).reads


def lookup_sets(tree: Node) -> Sets:
    """compile_filter's sets alone."""
    return compile_filter(tree).sets


def port_sets(tree: Node) -> tuple[frozenset[int], ...]:
    """The port sets to_c(tree) looks up, by index."""
    return tuple(lookup_sets(tree).ports)


def _compile(tree: Node, inet_known: bool, byteorder: str, sets: Sets) -> _C:
    """``inet_known``: an enclosing `and` has already tested that the family is AF_INET or AF_INET6;
    ``sets`` collects the sets the expression looks up (the same set once, whatever its uses)."""
    if isinstance(tree, Not):
        item = _compile(tree.item, inet_known, byteorder, sets)
        return _C(f"!{item.text}", item.reads)
    if isinstance(tree, Or):
        tree = _with_prefix_sets(_with_port_sets(tree, sets.ports), sets)
    if isinstance(tree, (And, Or)):
        # The family test, once: before an `and` where any item needs it, around an `or` where all do.
        needs = [_needs_inet(item) for item in tree.items]
        guard = not inet_known and (any(needs) if isinstance(tree, And) else all(needs))
        compiled = (_compile(item, inet_known or guard, byteorder, sets) for item in tree.items)
        items = sorted(compiled, key=lambda c: c.cost)
        operator = " && " if isinstance(tree, And) else " || "
        joined = _C(f"({operator.join(item.text for item in items)})", frozenset().union(*(i.reads for i in items)))
        return _C(f"({_INET[0]} && {joined.text})", joined.reads | _INET[1]) if guard else joined
    leaf = _leaf_c(tree, byteorder)
    if _needs_inet(tree) and not inet_known:
        return _C(f"({_INET[0]} && {leaf.text})", leaf.reads | _INET[1])
    return leaf


@dataclass(frozen=True)
class _PortSetTest:
    """Compiling only: ``end``'s port is in port set ``index`` (never parsed, never evaluated)."""

    end: str
    index: int


def _with_port_sets(tree: Or, sets: list[frozenset[int]]) -> Or:
    """An `or` of many equal-port tests of one end (``--filter-port`` repeated, or written out) tests
    that end once in a hash set: one lookup however long the list, where comparisons would grow the
    program past what the verifier takes. Up to MAX_PORT_SETS distinct sets; beyond, comparisons."""
    ports: dict[str, list[int]] = {"src": [], "dst": []}
    rest: list[Node] = []
    for item in tree.items:
        if isinstance(item, PortTest) and item.op == "==":
            ports[item.end].append(item.port)
        else:
            rest.append(item)
    lookups: list[Node] = []
    for end, listed in ports.items():
        wanted = frozenset(listed)
        if len(wanted) >= PORT_SET_MIN and (wanted in sets or len(sets) < MAX_PORT_SETS):
            if wanted not in sets:
                sets.append(wanted)
            lookups.append(cast(Node, _PortSetTest(end, sets.index(wanted))))
        else:
            rest.extend(PortTest(end, "==", port) for port in listed)
    return Or((*lookups, *rest)) if lookups else tree


@dataclass(frozen=True)
class _PrefixSetTest:
    """Compiling only: ``end``'s address is in prefix set ``index`` of ``family``."""

    end: str
    family: int
    index: int


def _with_prefix_sets(tree: Or, sets: Sets) -> Or:
    """An `or` of many prefixes of one end and family tests that end once in an LPM trie."""
    groups: dict[tuple[str, int], list[AddrTest]] = {}
    rest: list[Node] = []
    for item in tree.items:
        if isinstance(item, AddrTest):
            groups.setdefault((item.end, item.family), []).append(item)
        else:
            rest.append(item)
    lookups: list[Node] = []
    for (end, family), tests in groups.items():
        family_sets = sets.prefixes4 if family == AF_INET else sets.prefixes6
        wanted = frozenset((test.network, test.prefix) for test in tests)
        if len(wanted) >= PREFIX_SET_MIN and (wanted in family_sets or len(family_sets) < MAX_PREFIX_SETS):
            if wanted not in family_sets:
                family_sets.append(wanted)
            lookups.append(cast(Node, _PrefixSetTest(end, family, family_sets.index(wanted))))
        else:
            rest.extend(tests)
    return Or((*lookups, *rest)) if lookups else tree


def _needs_inet(tree: Node) -> bool:
    """Ports and protocols mean something only for AF_INET/AF_INET6 (addresses test their family themselves)."""
    return isinstance(tree, (PortTest, _PortSetTest, ProtocolTest))


def _leaf_c(leaf: Node, byteorder: str) -> _C:
    if isinstance(leaf, _PortSetTest):
        accessor = "F_SPORT" if leaf.end == "src" else "F_DPORT"
        return _C(f"port_in_set_{leaf.index}({accessor})", frozenset({accessor}))
    if isinstance(leaf, PortTest):
        accessor = "F_SPORT" if leaf.end == "src" else "F_DPORT"
        return _C(f"({accessor} {leaf.op} {leaf.port})", frozenset({accessor}))
    if isinstance(leaf, _PrefixSetTest):
        return _prefix_set_c(leaf, byteorder)
    if isinstance(leaf, AddrTest):
        return _address_c(leaf, byteorder)
    if isinstance(leaf, MarkTest):
        return _all_of(_masked("F_MARK", leaf.value, leaf.mask))
    if isinstance(leaf, ProtocolTest):
        return _C(f"(F_PROTOCOL == {leaf.protocol})", frozenset({"F_PROTOCOL"}))
    if isinstance(leaf, FamilyTest):
        return _C(f"(F_FAMILY == {leaf.family})", frozenset({"F_FAMILY"}))
    if isinstance(leaf, NetnsTest):
        return _C(f"(F_NETNS == {leaf.inode}U)", frozenset({"F_NETNS"}))
    if isinstance(leaf, PidTest):
        return _C(f"(F_PID == {leaf.pid}U)", frozenset({"F_PID"}))
    assert isinstance(leaf, StateTest)
    if not leaf.states:
        return _C("0", frozenset())
    if len(leaf.states) == 1:
        return _C(f"(F_STATE == {min(leaf.states)})", frozenset({"F_STATE"}))
    bits = sum(1 << state for state in leaf.states)
    return _C(f"(F_STATE < 32 && ((1U << F_STATE) & {bits}U) != 0)", frozenset({"F_STATE"}))


def _address_c(test: AddrTest, byteorder: str) -> _C:
    """Masked comparisons of u32 loads; an IPv4 test also takes the IPv4-mapped form on AF_INET6."""
    v6 = "F_SADDR6" if test.end == "src" else "F_DADDR6"
    if test.family == AF_INET6:
        network = test.network.to_bytes(16, "big")
        mask = _prefix_mask(test.prefix, 128).to_bytes(16, "big")
        words = [
            comparison
            for i in range(4)
            for comparison in _masked(f"{v6}({i})", _word(network, i, byteorder), _word(mask, i, byteorder))
        ]
        return _all_of([("F_FAMILY == 10", "F_FAMILY"), *words])
    network = test.network.to_bytes(4, "big")
    mask = _prefix_mask(test.prefix, 32).to_bytes(4, "big")
    v4 = "F_SADDR4" if test.end == "src" else "F_DADDR4"
    native = _all_of(
        [("F_FAMILY == 2", "F_FAMILY"), *_masked(v4, _word(network, 0, byteorder), _word(mask, 0, byteorder))]
    )
    mapped_prefix = (0, 0, _word(b"\0\0\xff\xff", 0, byteorder))
    mapped = _all_of(
        [
            ("F_FAMILY == 10", "F_FAMILY"),
            *((f"{v6}({i}) == {word}U", v6) for i, word in enumerate(mapped_prefix)),
            *_masked(f"{v6}(3)", _word(network, 0, byteorder), _word(mask, 0, byteorder)),
        ]
    )
    return _C(f"({native.text} || {mapped.text})", native.reads | mapped.reads)


def _prefix_set_c(test: _PrefixSetTest, byteorder: str) -> _C:
    """A trie lookup of the address as the u32 loads read it; an IPv4 set also takes the IPv4-mapped form."""
    v6 = "F_SADDR6" if test.end == "src" else "F_DADDR6"
    if test.family == AF_INET6:
        words = ", ".join(f"{v6}({i})" for i in range(4))
        return _C(f"(F_FAMILY == 10 && in_prefix6_set_{test.index}({words}))", frozenset({"F_FAMILY", v6}))
    v4 = "F_SADDR4" if test.end == "src" else "F_DADDR4"
    mapped = _word(b"\0\0\xff\xff", 0, byteorder)
    text = (
        f"((F_FAMILY == 2 && in_prefix4_set_{test.index}({v4})) || (F_FAMILY == 10 && {v6}(0) == 0U && "
        f"{v6}(1) == 0U && {v6}(2) == {mapped}U && in_prefix4_set_{test.index}({v6}(3))))"
    )
    return _C(text, frozenset({"F_FAMILY", v4, v6}))


def _word(packed: bytes, index: int, byteorder: str) -> int:
    """Word ``index`` of network-order bytes as a u32 load on the target reads it."""
    return int.from_bytes(packed[index * 4 : index * 4 + 4], byteorder)


def _masked(accessor: str, value: int, mask: int) -> list[tuple[str, str]]:
    """``accessor & mask == value`` as (C text, accessor read); nothing when the mask is empty."""
    name = accessor.split("(", 1)[0]
    if mask == 0:
        return []
    if mask == U32_MAX:
        return [(f"{accessor} == {value}U", name)]
    return [(f"({accessor} & {mask}U) == {value}U", name)]


def _all_of(comparisons: list[tuple[str, str]]) -> _C:
    """The conjunction of (C text, accessor read) pairs; "1" for none."""
    if not comparisons:
        return _C("1", frozenset())
    return _C(f"({' && '.join(text for text, _ in comparisons)})", frozenset(name for _, name in comparisons))
