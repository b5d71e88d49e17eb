"""Which kernel functions and raw tracepoints take a socket, and where its fields live.

Everything is read from BTF, never from headers, so the answers match the
running kernel: for each function, the position of its first ``struct sock *``
(or ``const struct sock *``, or else ``struct socket *``) among parameters 1-5
and the kind of its return value; for each raw tracepoint, the ``ctx->args``
index of its socket; the byte and bit location of every field the BPF program
reads; and, for kprobes, where this architecture's ``struct pt_regs`` keeps
the argument registers. The BTF answers are cached per kernel (see cache.py);
what ftrace can patch is read fresh on every run.
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .btf import Btf, BtfError, FuncProto, MemberLocation, load_btf_file
from .cache import cached
from .contract import ArgKind, ReturnKind
from .features import AVAILABLE_FILTER_FUNCTIONS
from .options import Options

__all__ = [
    "Discovery",
    "DiscoveryError",
    "FieldLocation",
    "KernelTypes",
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
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
KERNEL_NOTES = Path("/sys/kernel/notes")  # the running kernel's ELF notes, its GNU build id among them

# Compiler clones (GCC's interprocedural optimisations) may change the calling
# convention, so the BTF prototype no longer says which register holds the socket.
_CLONE_SUFFIX = re.compile(r"\.(isra|constprop|part|cold|llvm)\.?\d*.*$")


class DiscoveryError(Exception):
    """The kernel's BTF cannot answer a question socketrace must ask."""


class ProbeKind(Enum):
    FUNCTION = "function"
    TRACEPOINT = "tracepoint"


@dataclass(frozen=True)
class Probe:
    """One place to attach: a kernel function or raw tracepoint, and its socket argument.

    ``arg_index`` is 0-based: the function's parameter, or ``ctx->args[i]``.
    ``ret_kind`` and ``ret_size`` say how to read the function's return value.
    """

    name: str
    arg_index: int
    arg_kind: ArgKind
    kind: ProbeKind
    ret_kind: ReturnKind = ReturnKind.VOID
    ret_size: int = 0


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

    @property
    def end(self) -> int:
        """The byte after the field (0 when the kernel lacks it)."""
        return self.offset + self.size if self.offset >= 0 else 0


MISSING_FIELD = FieldLocation(-1, 0, 0, 0)

# Fields the BPF program reads: macro name -> candidate member paths, newest
# layout first; the first path the kernel's BTF has wins. SK_* fields are
# struct sock's (the first group inside its sock_common), SOCKET_* struct socket's.
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
    # Assigned on first use (sock_gen_cookie(): inet_diag, SO_COOKIE, BPF), 0 until then; copied into
    # time-wait and request socks, whose sock_common has it too.
    "SK_COOKIE": ("sock.__sk_common.skc_cookie",),
    "SK_PROTOCOL": ("sock.sk_protocol",),
    "SK_TYPE": ("sock.sk_type",),
    "SK_MARK": ("sock.sk_mark",),
    "SK_PRIORITY": ("sock.sk_priority",),
    "SK_RCVBUF": ("sock.sk_rcvbuf",),
    "SK_SNDBUF": ("sock.sk_sndbuf",),
    "SK_BACKLOG_LEN": ("sock.sk_backlog.len",),
    # Moved from inet_sock to sock in 5.18 (commit 0c0a5ef809f9, "tcp: move
    # sk_rx_dst_ifindex to struct sock"); inet_sock starts with its sock, so
    # the offset is relative to the sock either way.
    "SK_RX_DST_IFINDEX": ("sock.sk_rx_dst_ifindex", "inet_sock.rx_dst_ifindex"),
    "SK_SOCKET": ("sock.sk_socket",),
    # The local port as the kernel reports it (local_port() in bpf/socketrace.c), relative to the sock:
    # inet_sock starts with its sock, inet_timewait_sock with its sock_common. Not SK_*: read alone,
    # only from the socks that have them, never in the copy of a sock that may be smaller.
    "INET_SPORT": ("inet_sock.inet_sport",),
    "TW_SPORT": ("inet_timewait_sock.tw_sport",),
    "NET_NS_INUM": ("net.ns.inum",),
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
SOCK_COMMON_PREFIX = "sock.__sk_common."

# Without these the program cannot identify or filter a socket at all.
REQUIRED_FIELDS = frozenset({"SK_FAMILY", "SK_DPORT", "SK_NUM", "SK_DADDR", "SK_RCV_SADDR", "SK_PROTOCOL", "SOCKET_SK"})
# Fields located by adding the offsets of several members (kernel_field_locations).
COMPOSED_FIELDS = ("SOCKET_INODE_INO", "UNIX_ADDRESS_PATH")
FIELD_MACROS = frozenset(FIELD_PATHS) | frozenset(COMPOSED_FIELDS)

# The kprobe entries read the first five arguments, the instruction pointer and
# the return value from struct pt_regs, per the kernel's calling convention
# (arch/*/include/asm/ptrace.h); the offsets come from BTF.
REGISTER_PATHS: dict[str, dict[str, str]] = {
    "x86_64": {
        "REG_ARG0": "pt_regs.di",
        "REG_ARG1": "pt_regs.si",
        "REG_ARG2": "pt_regs.dx",
        "REG_ARG3": "pt_regs.cx",
        "REG_ARG4": "pt_regs.r8",
        "REG_IP": "pt_regs.ip",
        "REG_RET": "pt_regs.ax",
    },
    # struct pt_regs wraps user_pt_regs: regs[31], sp, pc, pstate (x0-x7 carry arguments, x0 the result).
    "aarch64": {
        **{f"REG_ARG{index}": f"pt_regs.regs[{index}]" for index in range(MAX_FUNC_ARGS)},
        "REG_IP": "pt_regs.pc",
        "REG_RET": "pt_regs.regs[0]",
    },
}

SOCKET_STRUCTS = {"sock": ArgKind.SOCK, "socket": ArgKind.SOCKET, "sk_buff": ArgKind.SKB}


@dataclass(frozen=True)
class KernelTypes:
    """What one kernel's BTF says, independent of options: cached per kernel.

    ``tracepoints`` includes those that take only an ``sk_buff`` (kind SKB),
    which --skb-tracepoints opts into. ``registers`` is empty on an
    architecture whose pt_regs socketrace does not know.
    """

    functions: tuple[Probe, ...]
    tracepoints: tuple[Probe, ...]
    fields: dict[str, FieldLocation]
    registers: dict[str, int]


@dataclass
class Discovery:
    """What this run traces: probes, field locations, and what was left out and why."""

    functions: list[Probe]
    tracepoints: list[Probe]
    fields: dict[str, FieldLocation]
    skipped: Counter[str] = field(default_factory=Counter)
    function_source: str = ""
    registers: dict[str, int] = field(default_factory=dict)


# --- questions to BTF ----------------------------------------------------------


def find_socket_probes(protos: list[FuncProto], btf: Btf, kind: ProbeKind, skb: bool = False) -> list[Probe]:
    """Probes whose parameters 1-5 point to a socket, with the argument's position.

    A ``struct sock *`` wins over a ``struct socket *`` (the sock holds the
    addresses), either over an ``sk_buff *`` (only with ``skb``); the position
    is the parameter's own, whatever precedes it.
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
                ret_kind, ret_size = btf.return_kind(proto.return_type)
                probes.append(Probe(proto.name, kinds.index(wanted), wanted, kind, ret_kind, ret_size))
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


def sock_common_fields() -> frozenset[str]:
    """The SK_* fields inside struct sock_common: valid even in time-wait and request socks."""
    return frozenset(macro for macro, paths in FIELD_PATHS.items() if paths[0].startswith(SOCK_COMMON_PREFIX))


def _unix_address_path(btf: Btf) -> FieldLocation:
    """``unix_address.name[0].sun_path``: a flexible array of sockaddr_un, so add the offsets."""
    try:
        name = btf.member("unix_address.name")
        path = btf.member("sockaddr_un.sun_path")
    except BtfError:
        return MISSING_FIELD
    return FieldLocation(name.byte_offset + path.byte_offset, path.size, 0, path.size * 8)


def _socket_inode_number(btf: Btf) -> FieldLocation:
    """``SOCK_INODE(sock)->i_ino`` relative to the socket: the socket and its
    inode are allocated together in ``struct socket_alloc``."""
    try:
        socket_start = btf.member("socket_alloc.socket").bit_offset
        ino = btf.member("socket_alloc.vfs_inode.i_ino")
    except BtfError:
        return MISSING_FIELD
    return FieldLocation.from_member(ino, -socket_start)


def register_offsets(btf: Btf, machine: str) -> dict[str, int]:
    """``REG_ARG0``..``REG_ARG4``, ``REG_IP`` and ``REG_RET``: byte offsets in struct pt_regs; empty when unknown."""
    paths = REGISTER_PATHS.get(machine)
    if paths is None:
        return {}
    try:
        return {name: btf.member(path).byte_offset for name, path in paths.items()}
    except BtfError as err:
        raise DiscoveryError(f"this kernel's struct pt_regs is not the {machine} one socketrace knows: {err}") from err


def require_registers(registers: dict[str, int]) -> dict[str, int]:
    """The register offsets, or an error naming the architecture when none are known."""
    if not registers:
        known = ", ".join(sorted(REGISTER_PATHS))
        raise DiscoveryError(
            f"kprobes need the argument registers of {platform.machine()}, which socketrace does not know "
            f"(it knows {known}); use --kprobe-way tracepoint"
        )
    return registers


# --- the cache of BTF answers ----------------------------------------------------


def _probe_to_json(probe: Probe) -> list[Any]:
    return [probe.name, probe.arg_index, int(probe.arg_kind), int(probe.ret_kind), probe.ret_size]


def _probe_from_json(item: list[Any], kind: ProbeKind) -> Probe:
    name, arg_index, arg_kind, ret_kind, ret_size = item
    if not isinstance(name, str) or not _is_int(arg_index, ret_size):
        raise TypeError(f"not a probe: {item!r}")
    return Probe(name, arg_index, ArgKind(arg_kind), kind, ReturnKind(ret_kind), ret_size)


def _is_int(*values: Any) -> bool:
    return all(type(value) is int for value in values)


def _btf_identity(path: str) -> str:
    """What identifies a BTF file: the running kernel's build id for its own BTF (a tiny read),
    else a hash of the content."""
    if path == VMLINUX_BTF:
        try:
            notes = KERNEL_NOTES.read_bytes()
            return f"build-id:{hashlib.sha256(notes).hexdigest()}:{Path(path).stat().st_size}"
        except OSError:
            pass
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _kernel_types_from_json(value: dict[str, Any], machine: str) -> KernelTypes:
    """The cached answer, checked: its field and register offsets become compiler flags, so only
    the macro names socketrace defines, with integer values, are taken."""
    fields = {name: FieldLocation(*loc) for name, loc in value["fields"].items()}
    if set(fields) != FIELD_MACROS or not all(_is_int(*vars(loc).values()) for loc in fields.values()):
        raise ValueError("cached field locations do not match this socketrace")
    registers = value["registers"]
    if set(registers) not in (set(), set(REGISTER_PATHS.get(machine, ()))) or not _is_int(*registers.values()):
        raise ValueError("cached register offsets do not match this socketrace")
    return KernelTypes(
        tuple(_probe_from_json(item, ProbeKind.FUNCTION) for item in value["functions"]),
        tuple(_probe_from_json(item, ProbeKind.TRACEPOINT) for item in value["tracepoints"]),
        fields,
        registers,
    )


def _vmlinux_types(btf_path: str, identity: str) -> tuple[KernelTypes, Btf | None]:
    """The kernel's own types (from the cache when this kernel was seen before), and
    its parsed BTF when it had to be read (modules' split BTF needs it as a base)."""
    parsed: list[Btf] = []
    machine = platform.machine()

    def scan() -> dict[str, Any]:
        btf = _load(btf_path)
        parsed.append(btf)
        tracepoints = find_socket_probes(btf.raw_tracepoints(), btf, ProbeKind.TRACEPOINT, skb=True)
        return {
            "functions": [_probe_to_json(probe) for probe in socket_functions(btf)],
            "tracepoints": [_probe_to_json(probe) for probe in tracepoints],
            "fields": {name: list(vars(loc).values()) for name, loc in kernel_field_locations(btf).items()},
            "registers": register_offsets(btf, machine),
        }

    types = cached("vmlinux", f"{identity}\0{machine}", scan, lambda value: _kernel_types_from_json(value, machine))
    return types, (parsed[0] if parsed else None)


def _module_functions(path: Path, btf_path: str, kernel_identity: str, vmlinux: list[Btf | None]) -> list[Probe]:
    """A module's socket functions, from its split BTF over the kernel's (cached like the kernel's)."""

    def scan() -> list[list[Any]]:
        if vmlinux[0] is None:
            vmlinux[0] = _load(btf_path)
        try:
            module = load_btf_file(path, base=vmlinux[0])
        except FileNotFoundError:
            raise DiscoveryError(f"--kmods: module {path.name} has no BTF here (not loaded?)") from None
        except (OSError, BtfError) as err:
            raise DiscoveryError(f"cannot read BTF of module {path.name}: {err}") from err
        return [_probe_to_json(probe) for probe in socket_functions(module)]

    try:
        identity = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DiscoveryError(f"--kmods: module {path.name} has no BTF here (not loaded?)") from None
    except OSError as err:
        raise DiscoveryError(f"cannot read BTF of module {path.name}: {err.strerror}") from err
    return cached(
        "module",
        f"{identity}\0{kernel_identity}",
        scan,
        lambda value: [_probe_from_json(item, ProbeKind.FUNCTION) for item in value],
    )


def _load(path: str) -> Btf:
    try:
        return load_btf_file(path)
    except (OSError, BtfError) as err:
        raise DiscoveryError(f"cannot read kernel BTF {path}: {err}") from err


def _module_btf_paths(options: Options) -> list[Path]:
    """BTF of the modules asked for (--kmods), or of every loaded one (--all-kmods)."""
    if options.all_kmods:
        try:
            return sorted(path for path in MODULE_BTF_DIR.iterdir() if path.name != "vmlinux")
        except OSError as err:
            raise DiscoveryError(f"cannot list {MODULE_BTF_DIR}: {err.strerror}") from err
    return [MODULE_BTF_DIR / name for name in options.kmods]


# --- what can be traced ----------------------------------------------------------


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
        return Counter(line.split(None, 1)[0] for line in text.splitlines() if line), path
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


def discover(options: Options, with_functions: bool, with_registers: bool = False) -> Discovery:
    """Read the kernel's BTF (or its cached answers) and symbol lists; the second stage of the pipeline.

    Kernel functions are looked up only ``with_functions`` (kprobe backends,
    ``--list-funcs``): the tracepoint backend does not need them.
    ``with_registers`` requires this architecture's pt_regs layout.
    """
    try:
        identity = _btf_identity(options.kernel_btf)
    except OSError as err:
        raise DiscoveryError(f"cannot read kernel BTF {options.kernel_btf}: {err.strerror}") from err
    types, vmlinux = _vmlinux_types(options.kernel_btf, identity)
    skipped: Counter[str] = Counter()
    functions: list[Probe] = []
    source = ""
    if with_functions:
        candidates = list(types.functions)
        base = [vmlinux]
        for path in _module_btf_paths(options):
            candidates += _module_functions(path, options.kernel_btf, identity, base)
        traceable, source = traceable_functions()
        functions = _select_functions(candidates, traceable, kprobe_blacklist(), options.filter_funcs, skipped)
    tracepoints = [
        probe
        for probe in types.tracepoints
        if (options.skb_tracepoints or probe.arg_kind is not ArgKind.SKB)
        and (options.filter_funcs is None or options.filter_funcs.fullmatch(probe.name))
    ]
    registers = require_registers(types.registers) if with_registers else types.registers
    return Discovery(functions, tracepoints, dict(types.fields), skipped, source, registers)
