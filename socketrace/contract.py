"""The contract between ``bpf/socketrace.c`` and the Python side, written once.

Everything both sides must agree on lives here: the record layout (the
ctypes mirror of ``struct event`` in ``bpf/socketrace.h``), flag bits,
counter indexes, the kprobe-multi cookie layout, argument and return kinds,
and the names of the program's entry points. The C never defines these
values itself: :func:`contract_macros` hands them to the compiler as ``-D``
macros, so they cannot drift. The one thing the C does write, the struct
layout, is checked field by field against :class:`Event` by a test that
compiles the header with clang and reads its BTF back.
"""

from __future__ import annotations

import ctypes
import struct
from enum import IntEnum

__all__ = [
    "COMM_LEN",
    "CONTROL_STOPPED",
    "CONTROL_TRACING",
    "ENTRY_KPROBE_MULTI",
    "EVENT_RETURN",
    "EVENT_SIZE",
    "MAX_STACK_DEPTH",
    "NO_PROBE_ID",
    "RETURN_KPROBE_MULTI",
    "SHARED_HANDLER",
    "SOCKET_PART",
    "SOCK_HAS_SOCKET",
    "UNIX_PATH_MAX",
    "ArgKind",
    "Counter",
    "Event",
    "MapName",
    "ReturnKind",
    "contract_macros",
    "kprobe_entry_name",
    "kprobe_multi_cookie",
    "rawtp_entry_name",
]

COMM_LEN = 16  # TASK_COMM_LEN
UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path)
MAX_STACK_DEPTH = 64  # frames kept with --output-stack

# event.flags: what this event is.
EVENT_RETURN = 1  # at the function's return: retval and duration_ns are valid
# event.sock_flags: what the socket has.
SOCK_HAS_SOCKET = 1  # sk->sk_socket was set: socket_* fields and socket_ino are valid

# probe_id of classic kprobes, which carry no cookie: the function is named by its address.
NO_PROBE_ID = 0xFFFF_FFFF
# Classic kprobes without bpf_get_func_ip() see the instruction pointer, which may point just past
# the breakpoint: an ip less than this many bytes past a function's address is that function.
IP_TOLERANCE = 16

# control[0]: events flow only while it says TRACING (set once attached, cleared at stop).
CONTROL_STOPPED = 0
CONTROL_TRACING = 1


class MapName:
    """The program's maps, by the names bpf/socketrace.c declares them with (BCC's macros take the
    name as an identifier, so the C spells them itself: test_program_cache.py checks the two agree)."""

    CONTROL = "control"  # [0]: CONTROL_TRACING or CONTROL_STOPPED
    CPU_STATES = "cpu_states"  # per CPU: nesting, pending sockets, the counters
    EVENTS = "events"  # the ring buffer (or perf buffer) of records
    SCRATCH = "scratch_space"  # per CPU and nesting level: a record being built
    CALLS = "calls"  # --output-return: calls in flight
    TRACKED = "tracked"  # --filter-track-sock: the sockets followed
    HANDLERS = "handlers"  # the tail-call slot of the shared handler
    SUMMARY_COUNTS = "summary_counts"  # --summary: runs per probe
    SUMMARY_LATENCY = "summary_latency"  # --summary --output-return: log2 latency per probe
    SUMMARY_SOCKS = "summary_socks"
    SUMMARY_TASKS = "summary_tasks"
    PORT_SET_0 = "port_set_0"  # --filter's port sets (filter_expr.MAX_PORT_SETS of them)
    PORT_SET_1 = "port_set_1"
    PORT_SET_2 = "port_set_2"
    PORT_SET_3 = "port_set_3"
    PREFIX4_SET_0 = "prefix4_set_0"  # --filter's prefix sets (filter_expr.MAX_PREFIX_SETS per family)
    PREFIX4_SET_1 = "prefix4_set_1"
    PREFIX6_SET_0 = "prefix6_set_0"
    PREFIX6_SET_1 = "prefix6_set_1"

    @classmethod
    def all(cls) -> frozenset[str]:
        return frozenset(value for name, value in vars(cls).items() if name.isupper())

    @classmethod
    def port_set(cls, index: int) -> str:
        return getattr(cls, f"PORT_SET_{index}")

    @classmethod
    def prefix_set(cls, version: int, index: int) -> str:
        return getattr(cls, f"PREFIX{version}_SET_{index}")


# Entry points with fixed names; the per-probe ones are named by the functions below.
ENTRY_KPROBE_MULTI = "kprobe_multi_entry"
RETURN_KPROBE_MULTI = "kprobe_multi_return"
SHARED_HANDLER = "shared_handler"


class ArgKind(IntEnum):
    """What the traced argument points to; the program turns it into a sock."""

    SOCK = 0  # struct sock *, const struct sock *
    SOCKET = 1  # struct socket *: read socket->sk
    SKB = 2  # struct sk_buff *: read skb->sk (raw tracepoints only, opt-in)


class ReturnKind(IntEnum):
    """How to read a function's return register (from its BTF return type)."""

    VOID = 0  # nothing to show
    SIGNED = 1  # sign-extended from its size; negative errno values are errors
    UNSIGNED = 2  # zero-extended from its size
    POINTER = 3  # shown in hex; ERR_PTR values are errors
    BOOL = 4  # true or false


class Counter(IntEnum):
    """Per-CPU counters of ``cpu_states``. Every run of an entry program ends in
    exactly one of the ENTRY ones; every run of the return program in one of the
    RETURN ones. STACK_ERRORS counts alongside, not per run."""

    EMITTED = 0  # event sent (--summary: counted; --output-return: call remembered)
    FILTERED = 1  # the socket did not pass the filters
    NO_SOCK = 2  # the argument, or socket->sk / skb->sk, was NULL
    NOT_TRACING = 3  # before the tracer was ready, or after it stopped
    BUFFER_FULL = 4  # no room in the ring or perf buffer
    NESTED = 5  # too many probes nested on one CPU (process, softirq, hardirq, NMI)
    TAIL_CALL = 6  # the tail call to the shared handler failed
    CALLS_FULL = 7  # --output-return: the table of calls in flight was full
    RETURN_EMITTED = 8
    RETURN_UNMATCHED = 9  # no remembered entry: filtered at entry, or entered before the tracer was ready
    RETURN_NOT_ERROR = 10  # --filter-errors: the call succeeded
    RETURN_NOT_TRACING = 11
    RETURN_BUFFER_FULL = 12
    RETURN_NESTED = 13
    STACK_ERRORS = 14


ENTRY_OUTCOMES = tuple(counter for counter in Counter if counter <= Counter.CALLS_FULL)
RETURN_OUTCOMES = tuple(counter for counter in Counter if Counter.RETURN_EMITTED <= counter <= Counter.RETURN_NESTED)

# kprobe-multi cookie, from the low bits up: (shift, width) of each part.
COOKIE_ARG_INDEX = (0, 4)
COOKIE_ARG_KIND = (4, 4)
COOKIE_RET_KIND = (8, 4)
COOKIE_RET_SIZE = (12, 4)  # bytes of the return type: 1, 2, 4 or 8
COOKIE_PROBE_ID = (16, 32)


def kprobe_multi_cookie(
    probe_id: int, arg_index: int, arg_kind: ArgKind, ret_kind: ReturnKind = ReturnKind.VOID, ret_size: int = 8
) -> int:
    """What the kprobe-multi programs learn from bpf_get_attach_cookie()."""
    cookie = 0
    for (shift, width), value in (
        (COOKIE_ARG_INDEX, arg_index),
        (COOKIE_ARG_KIND, int(arg_kind)),
        (COOKIE_RET_KIND, int(ret_kind)),
        (COOKIE_RET_SIZE, ret_size),
        (COOKIE_PROBE_ID, probe_id),
    ):
        if not 0 <= value < 1 << width:
            raise ValueError(f"{value} does not fit in {width} bits of the cookie")
        cookie |= value << shift
    return cookie


def rawtp_entry_name(probe_id: int) -> str:
    """One entry per raw tracepoint: the program is the only way to know which fired."""
    return f"rawtp_{probe_id}"


def kprobe_entry_name(arg_index: int, arg_kind: ArgKind) -> str:
    """One classic kprobe entry per argument position and kind, shared by many functions."""
    return f"kprobe_arg{arg_index}_kind{int(arg_kind)}"


class UnixDetail(ctypes.Structure):
    _fields_ = [("peer", ctypes.c_uint64), ("path_len", ctypes.c_int32), ("path", ctypes.c_char * UNIX_PATH_MAX)]


class NetlinkDetail(ctypes.Structure):
    _fields_ = [("portid", ctypes.c_uint32), ("dst_portid", ctypes.c_uint32), ("groups", ctypes.c_uint64)]


class PacketDetail(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_int32)]


class Detail(ctypes.Union):
    _fields_ = [("unix_sk", UnixDetail), ("netlink", NetlinkDetail), ("packet", PacketDetail)]


class Event(ctypes.Structure):
    """``struct event`` of bpf/socketrace.h, field for field.

    Two parts, in this order: what changes with every event (time, task,
    function, return), then the socket (``SOCKET_PART``), whose bytes the
    reader uses as the key of its cache of formatted socket text.
    """

    _fields_ = [
        # Per event.
        ("ts_ns", ctypes.c_uint64),  # bpf_ktime_get_ns()
        ("retval", ctypes.c_int64),  # EVENT_RETURN: the return value, extended per its ReturnKind
        ("duration_ns", ctypes.c_uint64),  # EVENT_RETURN: from entry to return
        ("pid", ctypes.c_uint32),  # thread id
        ("flags", ctypes.c_uint32),  # EVENT_*
        ("stack_bytes", ctypes.c_int32),  # bytes of kernel stack after the event, or -errno
        ("pad0", ctypes.c_uint32),
        # Who and where: the reader caches the text of these bytes (func_ip .. comm).
        ("func_ip", ctypes.c_uint64),  # classic kprobes: the traced function's address; else 0
        ("cpu", ctypes.c_uint32),
        ("probe_id", ctypes.c_uint32),  # index into the attached probes; NO_PROBE_ID for classic kprobes
        ("tgid", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("pad1", ctypes.c_uint32),
        # The socket.
        ("sk", ctypes.c_uint64),  # struct sock *: the socket's identity
        ("socket_ino", ctypes.c_uint64),  # SOCK_INODE(socket)->i_ino, as `ss -e` prints ino:
        ("cookie", ctypes.c_uint64),  # skc_cookie, as `ss -e` prints sk: (0 until the kernel assigns one)
        ("socket_flags", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),  # net->ns.inum
        ("mark", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("bound_dev_if", ctypes.c_int32),
        ("rx_dst_ifindex", ctypes.c_int32),
        ("backlog_len", ctypes.c_int32),
        ("rcvbuf", ctypes.c_int32),
        ("sndbuf", ctypes.c_int32),
        ("socket_state", ctypes.c_int32),  # socket->state (SS_*)
        ("socket_type", ctypes.c_int16),
        ("family", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("type", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),  # host byte order
        ("dport", ctypes.c_uint16),  # host byte order
        ("state", ctypes.c_uint8),  # skc_state (TCP_* numbering)
        ("reuseport", ctypes.c_uint8),
        ("sock_flags", ctypes.c_uint8),  # SOCK_*
        ("pad2", ctypes.c_uint8),
        ("saddr", ctypes.c_uint8 * 16),  # AF_INET: first 4 bytes; AF_INET6: all 16
        ("daddr", ctypes.c_uint8 * 16),
        ("pad3", ctypes.c_uint32),
        # What only one family has; which member is valid follows from `family`.
        ("detail", Detail),
    ]


EVENT_SIZE = ctypes.sizeof(Event)
# Byte ranges of the record the reader caches text by.
WHO_PART = (Event.func_ip.offset, Event.comm.offset + COMM_LEN)
# The who part as the formatters unpack it: func_ip, cpu, probe_id, tgid, comm.
WHO_STRUCT = struct.Struct(f"=QIII{COMM_LEN}s")
SOCKET_PART = (Event.sk.offset, EVENT_SIZE)


def contract_macros() -> dict[str, str]:
    """Every constant of this module the C uses, as ``-D`` macro name -> value."""
    macros = {
        "EVENT_COMM_LEN": COMM_LEN,
        "EVENT_UNIX_PATH_MAX": UNIX_PATH_MAX,
        "EVENT_SIZE": EVENT_SIZE,
        "MAX_STACK_DEPTH": MAX_STACK_DEPTH,
        "EVENT_RETURN": EVENT_RETURN,
        "SOCK_HAS_SOCKET": SOCK_HAS_SOCKET,
        "NO_PROBE_ID": f"{NO_PROBE_ID}U",
        "IP_TOLERANCE": IP_TOLERANCE,
        "CONTROL_TRACING": CONTROL_TRACING,
        "COUNTER_MAX": len(Counter),
    }
    macros.update({f"COUNTER_{counter.name}": int(counter) for counter in Counter})
    macros.update({f"ARG_{kind.name}": int(kind) for kind in ArgKind})
    macros.update({f"RET_{kind.name}": int(kind) for kind in ReturnKind})
    for name, (shift, width) in (
        ("ARG_INDEX", COOKIE_ARG_INDEX),
        ("ARG_KIND", COOKIE_ARG_KIND),
        ("RET_KIND", COOKIE_RET_KIND),
        ("RET_SIZE", COOKIE_RET_SIZE),
        ("PROBE_ID", COOKIE_PROBE_ID),
    ):
        macros[f"COOKIE_{name}_SHIFT"] = shift
        macros[f"COOKIE_{name}_MASK"] = f"{(1 << width) - 1}ULL"
    # Names of the entry points: identifiers of this module, never user input.
    macros.update(
        {
            "KPROBE_MULTI_ENTRY_NAME": ENTRY_KPROBE_MULTI,
            "KPROBE_MULTI_RETURN_NAME": RETURN_KPROBE_MULTI,
            "SHARED_HANDLER_NAME": SHARED_HANDLER,
        }
    )
    return {name: str(value) for name, value in macros.items()}
