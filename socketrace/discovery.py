"""Which kernel functions and raw tracepoints take a socket, and where its fields live.

Everything is read from BTF, never from headers, so the answers match the
running kernel: for each function, the position of its first ``struct sock *``
(or ``const struct sock *``, or else ``struct socket *``) among parameters 1-5;
for each raw tracepoint, the ``ctx->args`` index of its socket; and the byte
and bit location of every ``struct sock`` field the BPF program reads.
"""

from __future__ import annotations

import platform
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from pathlib import Path

from .btf import Btf, BtfError, FuncProto, MemberLocation, load_btf_file
from .features import AVAILABLE_FILTER_FUNCTIONS
from .options import Options
from .symbols import KernelSymbols

__all__ = [
    "ArgKind",
    "Discovery",
    "DiscoveryError",
    "FieldLocation",
    "Probe",
    "ProbeKind",
    "discover",
    "find_socket_probes",
    "kernel_field_locations",
    "register_offsets",
    "socket_functions",
    "traceable_functions",
]

MAX_FUNC_ARGS = 5  # arguments readable from registers by every backend
# The last traceable function to see a sock before the kernel frees it (net/core/sock.c).
SOCK_FREE_FUNCTION = "sk_destruct"

KALLSYMS = "/proc/kallsyms"
KPROBE_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
MODULE_BTF_DIR = Path("/sys/kernel/btf")  # one split BTF file per loaded module, beside vmlinux

# Compiler clones (GCC's interprocedural optimisations) may change the calling
# convention, so the BTF prototype no longer says which register holds the socket.
_CLONE_SUFFIX = re.compile(r"\.(isra|constprop|part|cold|llvm)\.?\d*.*$")


class DiscoveryError(Exception):
    """The kernel's BTF cannot answer a question socketrace must ask."""


class ArgKind(IntEnum):
    """What the traced argument points to; the BPF program turns it into a sock."""

    SOCK = 0  # struct sock *, const struct sock *
    SOCKET = 1  # struct socket *: read socket->sk
    SKB = 2  # struct sk_buff *: read skb->sk (raw tracepoints only, opt-in)


class ProbeKind(Enum):
    FUNCTION = "function"
    TRACEPOINT = "tracepoint"


@dataclass(frozen=True)
class Probe:
    """One place to attach: a kernel function or raw tracepoint, and its socket argument.

    ``arg_index`` is 0-based: the function's parameter, or ``ctx->args[i]``.
    """

    name: str
    arg_index: int
    arg_kind: ArgKind
    kind: ProbeKind
    returns_int32: bool = False  # the return value is the low 32 bits of the register


@dataclass(frozen=True)
class FieldLocation:
    """How the BPF program reads one field: byte offset and size to copy,
    then shift and width to extract. ``offset == -1`` means the kernel
    lacks the field and the program reads 0."""

    offset: int
    size: int
    shift: int
    bits: int

    @classmethod
    def from_member(cls, member: MemberLocation, base_bits: int = 0) -> FieldLocation:
        bit_offset = member.bit_offset + base_bits
        offset = bit_offset // 8
        shift = bit_offset % 8
        if not member.is_bitfield and member.size > 8:
            return cls(offset, member.size, 0, member.size * 8)
        needed = (shift + member.bits + 7) // 8
        size = next(size for size in (1, 2, 4, 8) if size >= needed)
        return cls(offset, size, shift, member.bits)


MISSING_FIELD = FieldLocation(-1, 0, 0, 0)

# Fields the BPF program reads: macro name -> candidate member paths, newest
# layout first; the first path the kernel's BTF has wins.
FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "SK_FAMILY": ("sock.__sk_common.skc_family",),
    "SK_STATE": ("sock.__sk_common.skc_state",),
    "SK_REUSEPORT": ("sock.__sk_common.skc_reuseport",),
    "SK_BOUND_DEV_IF": ("sock.__sk_common.skc_bound_dev_if",),
    "SK_DADDR": ("sock.__sk_common.skc_daddr",),
    "SK_RCV_SADDR": ("sock.__sk_common.skc_rcv_saddr",),
    "SK_DPORT": ("sock.__sk_common.skc_dport",),
    "SK_NUM": ("sock.__sk_common.skc_num",),
    "SK_V6_DADDR": ("sock.__sk_common.skc_v6_daddr",),
    "SK_V6_RCV_SADDR": ("sock.__sk_common.skc_v6_rcv_saddr",),
    "SK_NET": ("sock.__sk_common.skc_net.net",),
    "NET_NS_INUM": ("net.ns.inum",),
    "SK_PROTOCOL": ("sock.sk_protocol",),
    "SK_TYPE": ("sock.sk_type",),
    "SK_MARK": ("sock.sk_mark",),
    "SK_PRIORITY": ("sock.sk_priority",),
    "SK_RCVBUF": ("sock.sk_rcvbuf",),
    "SK_SNDBUF": ("sock.sk_sndbuf",),
    "SK_BACKLOG_LEN": ("sock.sk_backlog.len",),
    # Moved from inet_sock to sock in 5.18 (commit 0c0a5ef809f9); inet_sock
    # starts with its sock, so the offset is relative to the sock either way.
    "SK_RX_DST_IFINDEX": ("sock.sk_rx_dst_ifindex", "inet_sock.rx_dst_ifindex"),
    "SK_SOCKET": ("sock.sk_socket",),
    "SOCKET_STATE": ("socket.state",),
    "SOCKET_TYPE": ("socket.type",),
    "SOCKET_FLAGS": ("socket.flags",),
    "SOCKET_SK": ("socket.sk",),
    "SKB_SK": ("sk_buff.sk",),
    # Family detail; unix_sock, netlink_sock and packet_sock start with their sock.
    "UNIX_ADDR": ("unix_sock.addr",),
    "UNIX_PEER": ("unix_sock.peer",),
    "UNIX_ADDRESS_LEN": ("unix_address.len",),
    "NETLINK_PORTID": ("netlink_sock.portid",),
    "NETLINK_DST_PORTID": ("netlink_sock.dst_portid",),
    "NETLINK_GROUPS": ("netlink_sock.groups",),
    "PACKET_IFINDEX": ("packet_sock.ifindex",),
}

# The kprobe entries read arguments from struct pt_regs: the registers of
# the first five arguments, the instruction pointer, the return value (kernel calling
# convention, arch/*/include/asm/ptrace.h).
REGISTER_PATHS: dict[str, tuple[str, ...]] = {
    "x86_64": ("pt_regs.di", "pt_regs.si", "pt_regs.dx", "pt_regs.cx", "pt_regs.r8", "pt_regs.ip", "pt_regs.ax"),
}

# Without these the program cannot identify or filter a socket at all.
REQUIRED_FIELDS = frozenset({"SK_FAMILY", "SK_DPORT", "SK_NUM", "SK_DADDR", "SK_RCV_SADDR", "SK_PROTOCOL", "SOCKET_SK"})


@dataclass
class Discovery:
    """What the kernel offers: probes, field locations, and what was left out and why."""

    functions: list[Probe]
    tracepoints: list[Probe]
    fields: dict[str, FieldLocation]
    skipped: Counter[str] = field(default_factory=Counter)
    function_source: str = ""
    registers: dict[str, int] = field(default_factory=dict)
    sock_free_ip: int | None = None  # address of SOCK_FREE_FUNCTION, for --filter-track-sock


SOCKET_STRUCTS = {"sock": ArgKind.SOCK, "socket": ArgKind.SOCKET, "sk_buff": ArgKind.SKB}


def find_socket_probes(protos: list[FuncProto], btf: Btf, kind: ProbeKind, skb: bool = False) -> list[Probe]:
    """Probes whose parameters 1-5 point to a socket, with the argument's position.

    A ``struct sock *`` wins over a ``struct socket *`` (the sock holds the
    addresses); the position is the parameter's own, whatever precedes it.
    """
    return _socket_probes(protos, btf.pointer_ids(set(SOCKET_STRUCTS)), kind, skb, btf)


def _socket_probes(
    protos: list[FuncProto], pointers: dict[int, str], kind: ProbeKind, skb: bool, btf: Btf
) -> list[Probe]:
    probes = []
    for proto in protos:
        kinds = [SOCKET_STRUCTS.get(pointers.get(type_id, "")) for type_id in proto.param_types[:MAX_FUNC_ARGS]]
        for wanted in (ArgKind.SOCK, ArgKind.SOCKET, ArgKind.SKB):
            if wanted is ArgKind.SKB and not skb:
                break
            if wanted in kinds:
                int32 = btf.is_int32(proto.return_type)
                probes.append(Probe(proto.name, kinds.index(wanted), wanted, kind, int32))
                break
    return probes


def socket_functions(btf: Btf) -> list[Probe]:
    """Kernel functions taking a sock or socket: find_socket_probes over all
    functions, decoding only the names of those that qualify."""
    pointers = btf.pointer_ids({"sock", "socket"})
    candidates = btf.functions(lambda params: not pointers.keys().isdisjoint(params[:MAX_FUNC_ARGS]))
    return _socket_probes(candidates, pointers, ProbeKind.FUNCTION, False, btf)


def kernel_field_locations(btf: Btf) -> dict[str, FieldLocation]:
    """Locate every field in FIELD_PATHS; missing optional fields read as 0."""
    fields: dict[str, FieldLocation] = {}
    for macro, paths in FIELD_PATHS.items():
        fields[macro] = MISSING_FIELD
        for path in paths:
            try:
                fields[macro] = FieldLocation.from_member(btf.member(path))
                break
            except BtfError:
                continue
        if fields[macro] is MISSING_FIELD and macro in REQUIRED_FIELDS:
            raise DiscoveryError(f"kernel BTF has no {' or '.join(paths)}")
    fields["SOCKET_INODE_INO"] = _socket_inode_number(btf)
    fields["UNIX_ADDRESS_PATH"] = _unix_address_path(btf)
    return fields


def _unix_address_path(btf: Btf) -> FieldLocation:
    """``unix_address.name[0].sun_path``: a flexible array of sockaddr_un, so add the offsets."""
    try:
        name = btf.member("unix_address.name")
        path = btf.member("sockaddr_un.sun_path")
    except BtfError:
        return MISSING_FIELD
    return FieldLocation(name.byte_offset + path.byte_offset, path.size, 0, path.size * 8)


def register_offsets(btf: Btf, machine: str) -> dict[str, int]:
    """``REG_ARG0``..``REG_ARG4``, ``REG_IP`` and ``REG_RET``: byte offsets in struct pt_regs."""
    paths = REGISTER_PATHS.get(machine)
    if paths is None:
        raise DiscoveryError(f"kprobes are not supported on {machine} yet")
    names = [f"REG_ARG{index}" for index in range(MAX_FUNC_ARGS)] + ["REG_IP", "REG_RET"]
    try:
        return {name: btf.member(path).byte_offset for name, path in zip(names, paths)}
    except BtfError as err:
        raise DiscoveryError(str(err)) from err


def _socket_inode_number(btf: Btf) -> FieldLocation:
    """``SOCK_INODE(sock)->i_ino`` relative to the socket: the socket and its
    inode are allocated together in ``struct socket_alloc``."""
    try:
        socket_start = btf.member("socket_alloc.socket").bit_offset
        ino = btf.member("socket_alloc.vfs_inode.i_ino")
    except BtfError:
        return MISSING_FIELD
    return FieldLocation.from_member(ino, -socket_start)


def traceable_functions(
    filter_paths: tuple[str, ...] = AVAILABLE_FILTER_FUNCTIONS, kallsyms_path: str = KALLSYMS
) -> tuple[Counter[str], str]:
    """Names ftrace can patch (each with its number of occurrences), and the source.

    ``available_filter_functions`` is the truth for kprobes; where it is not
    readable (tracefs not mounted, or EPERM) the text symbols of kallsyms
    are the closest approximation.
    """
    for path in filter_paths:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        return Counter(line.split()[0] for line in text.splitlines() if line), path
    names: Counter[str] = Counter()
    with open(kallsyms_path) as kallsyms:
        for line in kallsyms:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tT":
                names[parts[2]] += 1
    return names, kallsyms_path


def kprobe_blacklist(path: str = KPROBE_BLACKLIST) -> set[str]:
    """Functions the kernel refuses to kprobe (empty when debugfs is unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    return {line.split()[1] for line in text.splitlines() if len(line.split()) >= 2}


def _select_functions(
    candidates: list[Probe],
    traceable: Counter[str],
    blacklist: set[str],
    name_filter: re.Pattern[str] | None,
    skipped: Counter[str],
) -> list[Probe]:
    """Keep functions that can be probed unambiguously, counting the rest by reason."""
    clone_bases = {_CLONE_SUFFIX.sub("", name) for name in traceable if _CLONE_SUFFIX.search(name)}
    by_name: dict[str, Probe] = {}
    conflicting: set[str] = set()
    for probe in candidates:
        known = by_name.setdefault(probe.name, probe)
        if known != probe:
            conflicting.add(probe.name)
    selected = []
    for name, probe in sorted(by_name.items()):
        if name_filter is not None and not name_filter.fullmatch(name):
            continue
        reason = _rejection(name, traceable, blacklist, clone_bases, conflicting)
        if reason:
            skipped[reason] += 1
        else:
            selected.append(probe)
    return selected


def _rejection(
    name: str, traceable: Counter[str], blacklist: set[str], clone_bases: set[str], conflicting: set[str]
) -> str | None:
    if name in conflicting:
        return "BTF has prototypes that disagree on the socket argument"
    if name in blacklist:
        return "in the kernel's kprobe blacklist"
    count = traceable.get(name, 0)
    if count > 1:
        return "several kernel symbols share the name"
    if count == 0:
        if name in clone_bases:
            return "only a compiler clone (.isra/.constprop) exists"
        return "not traceable (inlined, or not in available_filter_functions)"
    return None


def discover(options: Options, with_functions: bool) -> Discovery:
    """Read the kernel's BTF and symbol lists; the second stage of the pipeline.

    Kernel functions are looked up only ``with_functions`` (kprobe backends,
    ``--list-funcs``): the tracepoint backend does not need them.
    """
    try:
        btf = load_btf_file(options.kernel_btf)
    except (OSError, BtfError) as err:
        raise DiscoveryError(f"cannot read kernel BTF {options.kernel_btf}: {err}") from err
    skipped: Counter[str] = Counter()
    functions: list[Probe] = []
    source = ""
    registers: dict[str, int] = {}
    sock_free_ip = None
    if with_functions:
        candidates = socket_functions(btf)
        for module in _module_btfs(btf, options):
            candidates += socket_functions(module)
        traceable, source = traceable_functions()
        functions = _select_functions(candidates, traceable, kprobe_blacklist(), options.filter_funcs, skipped)
        registers = register_offsets(btf, platform.machine())
        if options.filters.track_sock and any(probe.name == SOCK_FREE_FUNCTION for probe in functions):
            sock_free_ip = KernelSymbols.from_kallsyms().address_of({SOCK_FREE_FUNCTION}).get(SOCK_FREE_FUNCTION)
    tracepoints = [
        probe
        for probe in find_socket_probes(btf.raw_tracepoints(), btf, ProbeKind.TRACEPOINT, options.skb_tracepoints)
        if options.filter_funcs is None or options.filter_funcs.fullmatch(probe.name)
    ]
    try:
        fields = kernel_field_locations(btf)
    except BtfError as err:
        raise DiscoveryError(str(err)) from err
    return Discovery(functions, tracepoints, fields, skipped, source, registers, sock_free_ip)


def _module_btfs(vmlinux: Btf, options: Options) -> list[Btf]:
    """BTF of the modules asked for (--kmods), or of every loaded one (--all-kmods)."""
    if options.all_kmods:
        paths = sorted(path for path in MODULE_BTF_DIR.iterdir() if path.name != "vmlinux")
    else:
        paths = [MODULE_BTF_DIR / name for name in options.kmods]
    modules = []
    for path in paths:
        try:
            modules.append(load_btf_file(path, base=vmlinux))
        except FileNotFoundError:
            raise DiscoveryError(f"--kmods: module {path.name} has no BTF here (not loaded?)") from None
        except (OSError, BtfError) as err:
            raise DiscoveryError(f"cannot read BTF of module {path.name}: {err}") from err
    return modules
