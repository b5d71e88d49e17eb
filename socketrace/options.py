"""What the user asked for, validated: the first stage of the pipeline.

Every value here is checked before anything is compiled, and every filter is
reduced to integers, because only validated integers may reach the BPF
program's ``-D`` macros. Parsing errors raise :class:`OptionError`, which the
CLI turns into a one-line message and exit status 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "AttachWay",
    "Filters",
    "OptionError",
    "Options",
    "OutputSpec",
    "Timestamp",
    "parse_addr",
    "parse_kmods",
    "parse_netns",
    "parse_protocol",
    "parse_regex",
]

U32_MAX = 0xFFFF_FFFF

# IPPROTO_* numbers users may give by name (include/uapi/linux/in.h, in6.h).
PROTOCOL_NUMBERS = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "icmpv6": 58,
    "sctp": 132,
    "udplite": 136,
    "mptcp": 262,
}

NETNS_DIR = "/run/netns"


class OptionError(ValueError):
    """A user-supplied value is invalid; the message names the option."""


class AttachWay(Enum):
    """How probes are attached (``--kprobe-way``); AUTO tries them in order."""

    AUTO = ""
    KPROBE_MULTI = "kprobe-multi"
    KPROBE = "kprobe"
    TRACEPOINT = "tracepoint"


@dataclass(frozen=True)
class Filters:
    """In-kernel filters; None means "do not filter on this"."""

    pid: int | None = None
    netns: int | None = None
    mark: int | None = None
    protocol: int | None = None
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int | None = None
    # Once a socket passes, keep tracing it even where the filtered fields no longer match.
    track_sock: bool = False
    # Only calls that returned a negative errno (needs return values).
    errors_only: bool = False

    @property
    def needs_inet(self) -> bool:
        """Address, port and protocol only mean something for AF_INET/AF_INET6."""
        return self.addr is not None or self.port is not None or self.protocol is not None


class Timestamp(Enum):
    """``--timestamp``: what the TIME column shows."""

    NONE = "none"
    ABSOLUTE = "absolute"  # wall clock
    RELATIVE = "relative"  # seconds since tracing started
    DELTA = "delta"  # since the previous event of the same socket


@dataclass(frozen=True)
class OutputSpec:
    """What each event carries, in which form, and where it goes."""

    file: str | None = None
    limit_lines: int = 0
    sock_common: bool = False
    sock_info: bool = False
    socket_info: bool = False
    stack: bool = False
    json: bool = False
    timestamp: Timestamp = Timestamp.NONE
    summary: bool = False
    summary_interval: float = 0.0  # seconds; 0: only on exit
    summary_top: int = 10
    ready_file: str | None = None
    return_values: bool = False  # events at return, with the value and the duration

    @property
    def reads_sock_info(self) -> bool:
        """JSON carries every field, so the kernel must read them all."""
        return self.sock_info or self.json

    @property
    def reads_socket_info(self) -> bool:
        return self.socket_info or self.json


@dataclass(frozen=True)
class Options:
    """Everything one run of socketrace needs, already validated."""

    filters: Filters = field(default_factory=Filters)
    output: OutputSpec = field(default_factory=OutputSpec)
    filter_funcs: re.Pattern[str] | None = None
    attach_way: AttachWay = AttachWay.AUTO
    kernel_btf: str = "/sys/kernel/btf/vmlinux"
    skb_tracepoints: bool = False
    kmods: tuple[str, ...] = ()  # kernel modules whose functions are traced too
    all_kmods: bool = False
    list_funcs: str | None = None
    dump_program: bool = False


def parse_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 or IPv6 address (``10.0.0.1``, ``::1``)."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise OptionError(f"--filter-addr: {text!r} is not an IPv4 or IPv6 address") from None


def parse_protocol(text: str) -> int:
    """A protocol name (tcp, udp, icmp, icmpv6, sctp, ...) or number 0-255."""
    name = text.strip().lower()
    if name in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[name]
    if name.isdigit() and int(name) <= 0xFFFF:
        return int(name)
    known = ", ".join(PROTOCOL_NUMBERS)
    raise OptionError(f"--filter-protocol: {text!r} is not one of {known} or a number")


def parse_netns(text: str) -> int:
    """A network namespace as an inode number, a path, or a name under /run/netns.

    A path (``/proc/PID/ns/net``, ``/run/netns/NAME``) is resolved to the inode
    of the namespace file, which is the ``ns.inum`` the kernel keeps.
    """
    value = text.strip()
    if value.isdigit():
        inode = int(value)
        if not 0 < inode <= U32_MAX:
            raise OptionError(f"--filter-netns: inode {value} is out of range")
        return inode
    if not value:
        raise OptionError("--filter-netns: empty value")
    path = value if "/" in value else os.path.join(NETNS_DIR, value)
    try:
        return os.stat(path).st_ino
    except OSError as err:
        raise OptionError(f"--filter-netns: cannot open {path}: {err.strerror}") from None


def parse_kmods(text: str) -> tuple[str, ...]:
    """A comma-separated list of kernel module names (``nf_conntrack,sctp``)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise OptionError(f"--kmods: {name!r} is not a module name")
    if not names:
        raise OptionError("--kmods: no module named")
    return names


def parse_regex(text: str) -> re.Pattern[str]:
    """A Python regular expression matched against whole function names."""
    try:
        return re.compile(text)
    except re.error as err:
        raise OptionError(f"--filter-funcs: invalid regular expression {text!r}: {err}") from None
