"""Which functions take a socket, at which position; which are kept and why not."""

from __future__ import annotations

import re
import struct
from collections import Counter
from pathlib import Path

import pytest

from socketrace.btf import Btf, FuncProto, load_btf_file
from socketrace.contract import ArgKind
from socketrace.discovery import (
    DiscoveryError,
    Probe,
    ProbeKind,
    _select_functions,
    find_socket_probes,
    kernel_field_locations,
    sock_common_fields,
    socket_functions,
)

from ..conftest import require
from .test_btf import BtfWriter

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def _positions(probes: list[Probe]) -> dict[str, tuple[int, ArgKind]]:
    return {probe.name: (probe.arg_index, probe.arg_kind) for probe in probes}


def test_argument_position_is_the_parameters_own(clang_btf: Btf) -> None:
    found = _positions(find_socket_probes(clang_btf.functions(), clang_btf, ProbeKind.FUNCTION))
    assert found["takes_sock"] == (0, ArgKind.SOCK)
    assert found["takes_const_sock_second"] == (1, ArgKind.SOCK)
    assert found["takes_typedef_third"] == (2, ArgKind.SOCK)
    assert found["takes_socket"] == (0, ArgKind.SOCKET)
    assert found["takes_both"] == (1, ArgKind.SOCK)  # the sock wins: it has the addresses
    assert "takes_other" not in found


def test_only_parameters_one_to_five_count(clang_btf: Btf) -> None:
    funcs = {func.name: func for func in clang_btf.functions()}
    int_type = funcs["takes_const_sock_second"].param_types[0]
    sock_ptr = funcs["takes_sock"].param_types[0]
    sixth = FuncProto("takes_sixth", (int_type,) * 5 + (sock_ptr,))
    fifth = FuncProto("takes_fifth", (int_type,) * 4 + (sock_ptr,))
    found = _positions(find_socket_probes([sixth, fifth], clang_btf, ProbeKind.FUNCTION))
    assert found == {"takes_fifth": (4, ArgKind.SOCK)}


def test_tracepoint_args_index(clang_btf: Btf) -> None:
    found = _positions(find_socket_probes(clang_btf.raw_tracepoints(), clang_btf, ProbeKind.TRACEPOINT))
    assert found == {"sock_event": (1, ArgKind.SOCK)}


def test_required_fields_missing_is_an_error(clang_btf: Btf) -> None:
    with pytest.raises(DiscoveryError, match="kernel BTF has no sock"):
        kernel_field_locations(clang_btf)


def _probe(name: str) -> Probe:
    return Probe(name, 0, ArgKind.SOCK, ProbeKind.FUNCTION)


def test_selection_reasons() -> None:
    traceable = Counter({"tcp_sendmsg": 1, "dup_name": 2, "cloned.isra.0": 1, "blocked": 1, "udp_sendmsg": 1})
    candidates = [_probe(name) for name in ("tcp_sendmsg", "dup_name", "cloned", "blocked", "inlined", "udp_sendmsg")]
    candidates.append(Probe("udp_sendmsg", 1, ArgKind.SOCK, ProbeKind.FUNCTION))  # a disagreeing prototype
    skipped: Counter[str] = Counter()
    kept = _select_functions(candidates, traceable, {"blocked"}, None, skipped)
    assert [probe.name for probe in kept] == ["tcp_sendmsg"]
    assert skipped == Counter(
        {
            "several kernel symbols share the name": 1,
            "only a compiler clone (.isra/.constprop) exists": 1,
            "in the kernel's kprobe blacklist": 1,
            "not traceable (inlined, or not in available_filter_functions)": 1,
            "BTF has prototypes that disagree on the socket argument": 1,
        }
    )


def test_filter_funcs_matches_whole_names() -> None:
    traceable = Counter({"tcp": 1, "tcp_sendmsg": 1, "udp_tcp": 1})
    candidates = [_probe(name) for name in traceable]
    kept = _select_functions(candidates, traceable, set(), re.compile("tcp"), Counter())
    assert [probe.name for probe in kept] == ["tcp"]
    kept = _select_functions(candidates, traceable, set(), re.compile("tcp_.*"), Counter())
    assert [probe.name for probe in kept] == ["tcp_sendmsg"]


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    require(VMLINUX_BTF.exists(), "this kernel has no /sys/kernel/btf/vmlinux")
    return load_btf_file(VMLINUX_BTF)


def test_this_kernel_positions(vmlinux: Btf) -> None:
    """The original read the wrong register for these; the BTF position is the truth."""
    found = _positions(find_socket_probes(vmlinux.functions(), vmlinux, ProbeKind.FUNCTION))
    assert found["inet_csk_reqsk_queue_add"] == (0, ArgKind.SOCK)
    assert found["netlink_attachskb"] == (0, ArgKind.SOCK)
    assert found["sock_init_data"] == (1, ArgKind.SOCK)
    assert found["tcp_sendmsg"] == (0, ArgKind.SOCK)
    assert found["inet_release"] == (0, ArgKind.SOCKET)
    sock_count = sum(1 for _, kind in found.values() if kind is ArgKind.SOCK)
    assert sock_count > 800  # 954 on Debian 11's 5.10, 1,378 on 6.18


def test_this_kernel_local_port_and_cookie_fields(vmlinux: Btf) -> None:
    """inet_sport lies past struct sock (read alone, only from inet socks), tw_sport past sock_common
    (read only from a time-wait sock), the cookie inside sock_common (valid in mini socks too)."""
    fields = kernel_field_locations(vmlinux)
    inet_sport, tw_sport, cookie = fields["INET_SPORT"], fields["TW_SPORT"], fields["SK_COOKIE"]
    assert (inet_sport.size, tw_sport.size, cookie.size) == (2, 2, 8)
    assert inet_sport.offset >= vmlinux.size_of(vmlinux.struct_id("sock"))
    assert tw_sport.offset >= vmlinux.size_of(vmlinux.struct_id("sock_common")) >= cookie.end
    assert "SK_COOKIE" in sock_common_fields() and not {"INET_SPORT", "TW_SPORT"} & sock_common_fields()


def test_this_kernel_const_sock_functions_are_found(vmlinux: Btf) -> None:
    const_sock = [
        func.name
        for func in vmlinux.functions()
        if any(vmlinux.pointee_struct(t) == ("sock", True) for t in func.param_types[:5])
    ]
    found = _positions(find_socket_probes(vmlinux.functions(), vmlinux, ProbeKind.FUNCTION))
    assert len(const_sock) > 50  # 74 on 5.10, over 100 on 6.x
    assert all(name in found for name in const_sock)


def test_this_kernel_tracepoints(vmlinux: Btf) -> None:
    """Every raw tracepoint with a sock among its arguments is found at that argument (on any kernel:
    which tracepoints exist changes with the release)."""
    tracepoints = vmlinux.raw_tracepoints()
    found = _positions(find_socket_probes(tracepoints, vmlinux, ProbeKind.TRACEPOINT))
    assert found["inet_sock_set_state"] == (0, ArgKind.SOCK)  # every release since 4.16
    for proto in tracepoints:
        structs = [(vmlinux.pointee_struct(param) or ("",))[0] for param in proto.param_types[:5]]
        if "sock" in structs:
            assert found[proto.name] == (structs.index("sock"), ArgKind.SOCK), proto.name
    with_skb = _positions(find_socket_probes(tracepoints, vmlinux, ProbeKind.TRACEPOINT, skb=True))
    assert len(with_skb) > len(found)
    assert all(with_skb[name] == position for name, position in found.items())  # a sock wins over an skb


def test_module_functions_use_the_base_pointer_types() -> None:
    """A module's split BTF points at vmlinux's `struct sock *`; its functions are found all the same."""
    base_writer = BtfWriter()
    base_writer.add("int", 1, 0, 4, struct.pack("<I", 32))  # id 1
    base_writer.add("sock", 4, 0, 8)  # id 2: struct sock
    base_writer.add("", 2, 0, 2)  # id 3: struct sock *
    base = Btf(base_writer.blob())
    module_writer = BtfWriter(str_base=len(base_writer.strings))
    params = struct.pack("<II", module_writer.name("flags"), 1) + struct.pack("<II", module_writer.name("sk"), 3)
    module_writer.add("", 13, 2, 1, params)  # id 4: int (int flags, struct sock *sk)
    module_writer.add("sctp_fn", 12, 0, 4)  # id 5: FUNC
    module = Btf(module_writer.blob(), base)
    assert _positions(socket_functions(module)) == {"sctp_fn": (1, ArgKind.SOCK)}
