"""What the user asked for, validated: the first stage of the pipeline.

Every value here is checked before anything is compiled, and every filter is
reduced to integers, because only validated integers may reach the BPF
program's ``-D`` macros. Errors raise :class:`OptionError`, which the CLI
turns into a one-line message and exit status 2.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .filter_expr import Node

__all__ = [
    "AttachWay",
    "Filters",
    "OptionError",
    "Options",
    "OutputSpec",
    "Timestamp",
    "check_readable",
    "check_writable",
    "parse_addr",
    "parse_host",
    "parse_kmods",
    "parse_netns",
    "parse_port_range",
    "parse_protocol",
    "parse_regex",
    "validate",
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
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), include/uapi/linux/nsfs.h (4.11+)
CLONE_NEWNET = 0x40000000
# CLONE_* of the other namespace types, to say what a wrong file is (include/uapi/linux/sched.h).
NAMESPACE_TYPES = {
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x00000080: "time",
}


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
    # --filter EXPR, parsed (socketrace.filter_expr); combined with the flags above by `and`.
    expr: Node | None = None
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
    perf_buffer: bool = False  # use the perf buffer even where ring buffers exist (tests that path)
    wait_detach: bool = False  # remove classic kprobes before exiting, not in the background


def parse_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 or IPv6 address (``10.0.0.1``, ``::1``)."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise OptionError(f"--filter-addr: {text!r} is not an IPv4 or IPv6 address") from None


def parse_host(
    text: str,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``--filter-addr``: an address, or a network ``ADDR/PREFIX`` (host bits are masked off, as ss does);
    a full-length prefix is the address itself."""
    address, slash, prefix = text.strip().partition("/")
    if not slash:
        return parse_addr(address)
    host = parse_addr(address)
    if not prefix.isdigit() or int(prefix) > host.max_prefixlen:
        raise OptionError(f"--filter-addr: {prefix!r} is not a prefix length 0-{host.max_prefixlen}")
    network = ipaddress.ip_network(f"{host}/{int(prefix)}", strict=False)
    return host if network.prefixlen == host.max_prefixlen else network


def parse_port_range(text: str) -> tuple[int, int]:
    """``--filter-port``: a port ``P`` or a range ``A-B`` (inclusive), 0-65535."""
    match = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text.strip())
    if not match:
        raise OptionError(f"--filter-port: {text!r} is not a port 0-65535 or a range A-B")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high > 0xFFFF:
        raise OptionError(f"--filter-port: {text!r} is out of range 0-65535")
    if low > high:
        raise OptionError(f"--filter-port: {text!r} is an empty range")
    return low, high


def parse_protocol(text: str) -> int:
    """A protocol name (tcp, udp, icmp, icmpv6, sctp, ...) or number 0-65535."""
    name = text.strip().lower()
    if name in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[name]
    if name.isdigit() and int(name) <= 0xFFFF:
        return int(name)
    known = ", ".join(PROTOCOL_NUMBERS)
    raise OptionError(f"--filter-protocol: {text!r} is not one of {known} or a number 0-65535")


def parse_netns(text: str) -> int:
    """A network namespace as an inode number, a path, or a name under /run/netns.

    A path (``/proc/PID/ns/net``, ``/run/netns/NAME``) must be a namespace file
    of a network namespace (the NS_GET_NSTYPE ioctl says which); its inode is
    the ``ns.inum`` the kernel keeps.
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise OptionError(f"--filter-netns: cannot open {path}: {err.strerror}") from None
    try:
        ns_type = fcntl.ioctl(fd, NS_GET_NSTYPE)
        inode = os.fstat(fd).st_ino
    except OSError as err:
        if err.errno in (errno.ENOTTY, errno.EINVAL):
            raise OptionError(f"--filter-netns: {path} is not a namespace file") from None
        raise OptionError(f"--filter-netns: {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    if ns_type != CLONE_NEWNET:
        kind = NAMESPACE_TYPES.get(ns_type, "another kind of")
        raise OptionError(f"--filter-netns: {path} is a {kind} namespace, not a network namespace")
    return inode


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


def check_writable(flag: str, path: str) -> str:
    """A file socketrace will create or overwrite: its directory must exist and be writable."""
    if not path:
        raise OptionError(f"{flag}: empty path")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OptionError(f"{flag}: {path} is a directory")
    if not os.path.isdir(directory):
        raise OptionError(f"{flag}: directory {directory} does not exist")
    if os.path.exists(path) and not stat.S_ISFIFO(os.stat(path).st_mode):  # a FIFO waits for its reader
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # root passes access(); the file may still refuse
        except OSError as err:
            raise OptionError(f"{flag}: {path} is not writable: {err.strerror}") from None
    if not os.path.exists(path) and not os.access(directory, os.W_OK | os.X_OK):
        raise OptionError(f"{flag}: cannot create files in {directory}")
    return path


def check_readable(flag: str, path: str) -> str:
    """A file socketrace will read."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        reason = "does not exist" if not os.path.exists(path) else "is not a readable file"
        raise OptionError(f"{flag}: {path} {reason}")
    return path


def validate(options: Options) -> Options:
    """Checks across flags; returns the options with implied flags set."""
    output, filters, way = options.output, options.filters, options.attach_way
    if filters.errors_only:
        output = replace(output, return_values=True)  # --filter-errors implies --output-return
    if output.json and output.summary:
        raise OptionError("--output-json and --summary: choose one")
    if not output.summary:
        for given, flag in (
            (output.summary_interval, "--summary-interval"),
            (output.summary_top != 10, "--summary-top"),
        ):
            if given:
                raise OptionError(f"{flag} needs --summary")
    else:
        for given, flag in (
            (output.limit_lines, "--output-limit-lines"),
            (output.stack, "--output-stack"),
            (output.timestamp is not Timestamp.NONE, "--timestamp"),
            (output.sock_common or output.sock_info or output.socket_info, "--output-sock-*/--output-socket-info"),
        ):
            if given:
                raise OptionError(f"{flag} has no effect with --summary: choose one")
    if output.file is not None and output.file == output.ready_file:
        raise OptionError("--output-file and --ready-file name the same file")
    if options.skb_tracepoints:
        if way in (AttachWay.KPROBE, AttachWay.KPROBE_MULTI):
            raise OptionError(f"--skb-tracepoints needs the tracepoint backend, not --kprobe-way {way.value}")
        way = AttachWay.TRACEPOINT  # sk_buff tracepoints are what was asked for
    chosen = "--skb-tracepoints" if options.skb_tracepoints else f"--kprobe-way {way.value}"
    if output.return_values and way in (AttachWay.KPROBE, AttachWay.TRACEPOINT):
        raise OptionError(f"--output-return and --filter-errors need kprobe-multi, not {chosen}")
    if (options.kmods or options.all_kmods) and way is AttachWay.TRACEPOINT:
        raise OptionError(f"--kmods and --all-kmods trace module functions, which {chosen} cannot")
    return replace(options, output=output, attach_way=way)
