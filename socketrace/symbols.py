"""Names for the numbers the kernel reports: families, protocols, states, kernel addresses.

Tables follow include/linux/socket.h, include/uapi/linux/in.h, netlink.h,
include/net/tcp_states.h and include/uapi/linux/net.h.
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterable

from .contract import IP_TOLERANCE, NO_PROBE_ID, ReturnKind

__all__ = [
    "KernelSymbols",
    "ProbeTable",
    "errno_name",
    "family_name",
    "format_return",
    "protocol_name",
    "return_value",
    "sock_type_name",
    "socket_state_name",
    "tcp_state_name",
]

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
IPPROTO_TCP = 6
MAX_ERRNO = 4095  # include/linux/err.h

_FAMILIES = (
    "AF_UNSPEC AF_UNIX AF_INET AF_AX25 AF_IPX AF_APPLETALK AF_NETROM AF_BRIDGE AF_ATMPVC AF_X25 "
    "AF_INET6 AF_ROSE AF_DECnet AF_NETBEUI AF_SECURITY AF_KEY AF_NETLINK AF_PACKET AF_ASH AF_ECONET "
    "AF_ATMSVC AF_RDS AF_SNA AF_IRDA AF_PPPOX AF_WANPIPE AF_LLC AF_IB AF_MPLS AF_CAN AF_TIPC "
    "AF_BLUETOOTH AF_IUCV AF_RXRPC AF_ISDN AF_PHONET AF_IEEE802154 AF_CAIF AF_ALG AF_NFC AF_VSOCK "
    "AF_KCM AF_QIPCRTR AF_SMC AF_XDP AF_MCTP"
).split()

_IP_PROTOCOLS = {
    0: "IPPROTO_IP",
    1: "IPPROTO_ICMP",
    2: "IPPROTO_IGMP",
    4: "IPPROTO_IPIP",
    6: "IPPROTO_TCP",
    8: "IPPROTO_EGP",
    12: "IPPROTO_PUP",
    17: "IPPROTO_UDP",
    22: "IPPROTO_IDP",
    29: "IPPROTO_TP",
    33: "IPPROTO_DCCP",
    41: "IPPROTO_IPV6",
    46: "IPPROTO_RSVP",
    47: "IPPROTO_GRE",
    50: "IPPROTO_ESP",
    51: "IPPROTO_AH",
    58: "IPPROTO_ICMPV6",
    92: "IPPROTO_MTP",
    94: "IPPROTO_BEETPH",
    98: "IPPROTO_ENCAP",
    103: "IPPROTO_PIM",
    108: "IPPROTO_COMP",
    115: "IPPROTO_L2TP",
    132: "IPPROTO_SCTP",
    136: "IPPROTO_UDPLITE",
    137: "IPPROTO_MPLS",
    143: "IPPROTO_ETHERNET",
    255: "IPPROTO_RAW",
    262: "IPPROTO_MPTCP",
}

_NETLINK_PROTOCOLS = {
    0: "NETLINK_ROUTE",
    1: "NETLINK_UNUSED",
    2: "NETLINK_USERSOCK",
    3: "NETLINK_FIREWALL",
    4: "NETLINK_SOCK_DIAG",
    5: "NETLINK_NFLOG",
    6: "NETLINK_XFRM",
    7: "NETLINK_SELINUX",
    8: "NETLINK_ISCSI",
    9: "NETLINK_AUDIT",
    10: "NETLINK_FIB_LOOKUP",
    11: "NETLINK_CONNECTOR",
    12: "NETLINK_NETFILTER",
    13: "NETLINK_IP6_FW",
    14: "NETLINK_DNRTMSG",
    15: "NETLINK_KOBJECT_UEVENT",
    16: "NETLINK_GENERIC",
    18: "NETLINK_SCSITRANSPORT",
    19: "NETLINK_ECRYPTFS",
    20: "NETLINK_RDMA",
    21: "NETLINK_CRYPTO",
    22: "NETLINK_SMC",
}

_TCP_STATES = (
    "UNKNOWN ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE CLOSE_WAIT "
    "LAST_ACK LISTEN CLOSING NEW_SYN_RECV BOUND_INACTIVE"
).split()

_SOCKET_STATES = ("FREE", "UNCONNECTED", "CONNECTING", "CONNECTED", "DISCONNECTING")

_SOCK_TYPES = {
    1: "SOCK_STREAM",
    2: "SOCK_DGRAM",
    3: "SOCK_RAW",
    4: "SOCK_RDM",
    5: "SOCK_SEQPACKET",
    6: "SOCK_DCCP",
    10: "SOCK_PACKET",
}


def _from_sequence(names: tuple[str, ...] | list[str], value: int) -> str:
    return names[value] if 0 <= value < len(names) else str(value)


def family_name(family: int) -> str:
    return _from_sequence(_FAMILIES, family)


def protocol_name(family: int, protocol: int) -> str:
    """IPPROTO_* for IP families, NETLINK_* for netlink, else the number."""
    if family in (AF_INET, AF_INET6):
        return _IP_PROTOCOLS.get(protocol, str(protocol))
    if family == AF_NETLINK:
        return _NETLINK_PROTOCOLS.get(protocol, str(protocol))
    return str(protocol)


def tcp_state_name(state: int) -> str:
    """skc_state, which every family numbers as TCP does (TCP_ESTABLISHED...)."""
    return _from_sequence(_TCP_STATES, state) if state else str(state)


def socket_state_name(state: int) -> str:
    """socket->state (SS_FREE...), without the SS_ prefix as the original prints it."""
    return _from_sequence(_SOCKET_STATES, state)


def sock_type_name(sock_type: int) -> str:
    return _SOCK_TYPES.get(sock_type, str(sock_type))


def errno_name(retval: int, kind: ReturnKind = ReturnKind.SIGNED) -> str | None:
    """EADDRINUSE for -98 from an int, or for ERR_PTR(-98) from a pointer; else None."""
    if kind in (ReturnKind.SIGNED, ReturnKind.POINTER) and -MAX_ERRNO <= retval < 0:
        return errno.errorcode.get(-retval, f"E{-retval}")
    return None


def return_value(retval: int, kind: ReturnKind) -> int | bool | str | None:
    """The return value as its BTF type reads: None for void, a bool, a pointer in hex, or an int."""
    if kind is ReturnKind.VOID:
        return None
    if kind is ReturnKind.BOOL:
        return bool(retval)
    if kind is ReturnKind.POINTER:
        return f"{retval & 0xFFFF_FFFF_FFFF_FFFF:#x}"
    return retval


def format_return(retval: int, duration_ns: int, kind: ReturnKind) -> str:
    """``ret=-98 errno=EADDRINUSE duration=12.3us``; no ret= for void, true/false for bool, pointers in hex."""
    value = return_value(retval, kind)
    shown = "" if value is None else f"ret={str(value).lower() if isinstance(value, bool) else value} "
    name = errno_name(retval, kind)
    return shown + (f"errno={name} " if name else "") + f"duration={duration_ns / 1000:.1f}us"


class KernelSymbols:
    """Kernel text addresses to ``name+0xoffset``, from kallsyms (root sees real addresses)."""

    def __init__(self, symbols: Iterable[tuple[int, str]]) -> None:
        pairs = sorted(symbols)
        self._addresses = [address for address, _ in pairs]
        self._names = [name for _, name in pairs]

    @classmethod
    def from_kallsyms(cls, wanted: set[str] | None = None, path: str = "/proc/kallsyms") -> KernelSymbols:
        """Text symbols of the running kernel; only the ``wanted`` names when given (a faster read)."""
        symbols = []
        with open(path) as kallsyms:
            for line in kallsyms:
                address, kind, name = line.split(None, 3)[:3]
                if kind in "tTwW" and (wanted is None or name in wanted):
                    symbols.append((int(address, 16), name))
        return cls(symbols)

    def address_of(self, names: set[str]) -> dict[str, int]:
        """Addresses of the given function names (unique names only are ever asked for)."""
        return {name: address for address, name in zip(self._addresses, self._names) if name in names}

    def describe(self, address: int) -> str:
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0 or not address:
            return f"0x{address:x}"
        offset = address - self._addresses[index]
        return f"{self._names[index]}+0x{offset:x}" if offset else self._names[index]


class ProbeTable:
    """The traced function of an event, by name (never a hex address), and its return kind.

    Tracepoints and kprobe-multi report a probe id. Classic kprobes report the
    function's address: exact from bpf_get_func_ip(), or the instruction pointer
    just past the entry breakpoint on older kernels, hence the small tolerance.
    """

    def __init__(
        self,
        names: list[str],
        addresses: dict[str, int] | None = None,
        ret_kinds: list[ReturnKind] | None = None,
    ) -> None:
        self._names = names
        self._ret_kinds = ret_kinds or [ReturnKind.VOID] * len(names)
        by_address = sorted((address, name) for name, address in (addresses or {}).items())
        self._addresses = [address for address, _ in by_address]
        self._by_address = [name for _, name in by_address]

    def name_of(self, probe_id: int, func_ip: int = 0) -> str:
        if probe_id != NO_PROBE_ID:
            return self._names[probe_id]
        index = bisect.bisect_right(self._addresses, func_ip) - 1
        if index >= 0 and func_ip - self._addresses[index] < IP_TOLERANCE:
            return self._by_address[index]
        return f"unknown+0x{func_ip:x}"

    def ret_kind_of(self, probe_id: int) -> ReturnKind:
        """Return values come from kprobe-multi only, whose events carry a probe id."""
        return self._ret_kinds[probe_id] if probe_id != NO_PROBE_ID else ReturnKind.VOID
