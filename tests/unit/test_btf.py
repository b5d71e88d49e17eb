"""The BTF reader on a blob clang builds, on hand-made blobs, and on this kernel against bpftool."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from socketrace import bpfsys
from socketrace.btf import Btf, BtfError, load_btf_file
from socketrace.discovery import FIELD_PATHS

from ..conftest import require, require_tool

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def test_functions_and_their_parameters(clang_btf: Btf) -> None:
    funcs = {func.name: func for func in clang_btf.functions()}
    assert {"takes_sock", "takes_const_sock_second", "takes_socket", "takes_both"} <= set(funcs)
    params = funcs["takes_const_sock_second"].param_types
    assert len(params) == 2
    assert clang_btf.pointee_struct(params[0]) is None  # int
    assert clang_btf.pointee_struct(params[1]) == ("sock", True)
    third = funcs["takes_typedef_third"].param_types[2]
    assert clang_btf.pointee_struct(third) == ("sock", False)  # through the typedef


def test_raw_tracepoint_prototypes_drop_the_data_argument(clang_btf: Btf) -> None:
    tracepoints = {tp.name: tp for tp in clang_btf.raw_tracepoints()}
    params = tracepoints["sock_event"].param_types
    assert len(params) == 2  # (int reason, struct sock *sk): ctx->args[0], args[1]
    assert clang_btf.pointee_struct(params[1]) == ("sock", False)


def test_member_offsets_through_anonymous_unions_and_bitfields(clang_btf: Btf) -> None:
    daddr = clang_btf.member("sock.__sk_common.skc_daddr")
    saddr = clang_btf.member("sock.__sk_common.skc_rcv_saddr")
    assert (daddr.byte_offset, daddr.size, saddr.byte_offset) == (0, 4, 4)
    reuseport = clang_btf.member("sock.__sk_common.skc_reuseport")
    assert (reuseport.bit_offset, reuseport.bits, reuseport.is_bitfield) == (8 * 8 + 16 + 4, 1, True)
    assert clang_btf.member("sock.sk_mark").byte_offset == 16
    assert clang_btf.member("sock.sk_backlog.len").byte_offset == 20
    with pytest.raises(BtfError):
        clang_btf.member("sock.no_such_member")
    with pytest.raises(BtfError):
        clang_btf.member("no_such_struct.x")


class BtfWriter:
    """Builds raw BTF by hand, for encodings clang no longer emits."""

    def __init__(self, str_base: int = 0) -> None:
        self.types = b""
        self.strings = b"" if str_base else b"\0"
        self.str_base = str_base

    def name(self, text: str) -> int:
        offset = self.str_base + len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, trailer: bytes = b"", kind_flag: int = 0) -> None:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name) if name else 0, info, size_or_type) + trailer

    def blob(self) -> bytes:
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return header + self.types + self.strings


def test_old_style_bitfield_encoded_in_the_int_type() -> None:
    writer = BtfWriter()
    writer.add("unsigned int", 1, 0, 4, struct.pack("<I", 32))  # id 1
    writer.add("unsigned int", 1, 0, 4, struct.pack("<I", 3))  # id 2: a 3-bit INT
    members = struct.pack("<III", writer.name("a"), 1, 0) + struct.pack("<III", writer.name("b"), 2, 35)
    writer.add("s", 4, 2, 8, members)  # id 3, kind_flag 0
    member = Btf(writer.blob()).member("s.b")
    assert (member.bit_offset, member.bits, member.is_bitfield) == (35, 3, True)


def test_split_btf_resolves_ids_and_names_in_the_base() -> None:
    base_writer = BtfWriter()
    base_writer.add("int", 1, 0, 4, struct.pack("<I", 32))  # id 1
    base = Btf(base_writer.blob())
    module_writer = BtfWriter(str_base=len(base_writer.strings))
    module_writer.add("modstruct", 4, 1, 4, struct.pack("<III", module_writer.name("field"), 1, 0))  # id 2
    module = Btf(module_writer.blob(), base)
    assert module.first_id == 2
    assert module.struct_id("modstruct") == 2
    assert module.member("modstruct.field").size == 4  # type id 1 lives in the base
    assert module.header(1)[0] == "int"


def test_not_btf() -> None:
    with pytest.raises(BtfError):
        Btf(b"\0" * 64)


def _bpftool_raw_dump(path: Path) -> dict[int, dict]:
    """An independent parse of `bpftool btf dump format raw`, the oracle."""
    bpftool = require_tool("bpftool")
    text = subprocess.run(
        [bpftool, "btf", "dump", "file", str(path), "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    types: dict[int, dict] = {}
    current: dict = {}
    for line in text.splitlines():
        head = re.match(r"\[(\d+)\] (\w+) '([^']*)'(.*)", line)
        if head:
            type_id, kind, name, rest = head.groups()
            target = re.search(r"type_id=(\d+)", rest)
            current = {"kind": kind, "name": name, "type": int(target.group(1)) if target else 0, "members": []}
            types[int(type_id)] = current
            continue
        member = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?", line)
        if member:
            name, type_id, offset, bits = member.groups()
            current["members"].append((name, int(type_id), int(offset), int(bits or 0)))
    return types


def _oracle_offset(types: dict[int, dict], path: str) -> int | None:
    struct_name, *names = path.split(".")
    type_id = next(i for i, t in types.items() if t["kind"] in ("STRUCT", "UNION") and t["name"] == struct_name)
    total = 0

    def find(type_id: int, wanted: str) -> tuple[int, int] | None:
        while types[type_id]["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
            type_id = types[type_id]["type"]
        for name, member_type, offset, _bits in types[type_id]["members"]:
            if name == wanted:
                return member_type, offset
            if name == "(anon)":
                inner = find(member_type, wanted)
                if inner:
                    return inner[0], offset + inner[1]
        return None

    for name in names:
        found = find(type_id, name)
        if found is None:
            return None
        type_id, offset = found
        total += offset
    return total


def test_this_kernel_agrees_with_bpftool() -> None:
    require(VMLINUX_BTF.exists(), "this kernel has no /sys/kernel/btf/vmlinux")
    oracle = _bpftool_raw_dump(VMLINUX_BTF)
    btf = load_btf_file(VMLINUX_BTF)
    ours = {func.name for func in btf.functions()}
    theirs = {t["name"] for t in oracle.values() if t["kind"] == "FUNC"}
    assert ours == theirs
    assert len(ours) > 10_000
    checked = 0
    for paths in FIELD_PATHS.values():
        for path in paths:
            expected = _oracle_offset(oracle, path)
            if expected is None:
                with pytest.raises(BtfError):
                    btf.member(path)
                continue
            assert btf.member(path).bit_offset == expected, path
            checked += 1
    assert checked >= len(FIELD_PATHS) - 1


def test_bpf_prog_info_offsets_are_this_kernels() -> None:
    require(VMLINUX_BTF.exists(), "this kernel has no /sys/kernel/btf/vmlinux")
    btf = load_btf_file(VMLINUX_BTF)
    for field, offset in (
        ("id", bpfsys.PROG_INFO_ID),
        ("tag", bpfsys.PROG_INFO_TAG),
        ("run_time_ns", bpfsys.PROG_INFO_RUN_TIME_NS),
        ("run_cnt", bpfsys.PROG_INFO_RUN_CNT),
        ("recursion_misses", bpfsys.PROG_INFO_RECURSION_MISSES),
    ):
        try:
            member = btf.member(f"bpf_prog_info.{field}")
        except BtfError:
            assert field == "recursion_misses"  # 5.12+: older kernels leave those bytes 0
            continue
        assert member.byte_offset == offset, field
        assert member.byte_offset + member.size <= bpfsys.PROG_INFO_SIZE
