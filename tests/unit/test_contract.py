"""The C and Python sides agree: struct event field by field, and the cookie layout."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from socketrace import contract
from socketrace.btf import Btf, load_btf_file
from socketrace.contract import ArgKind, Event, ReturnKind, kprobe_multi_cookie

from ..conftest import require_tool

BPF_DIR = Path(__file__).parents[2] / "bpf"


@pytest.fixture(scope="module")
def header_btf(tmp_path_factory: pytest.TempPathFactory) -> Btf:
    """bpf/socketrace.h compiled by clang with the contract's macros, its BTF read back by our reader."""
    clang = require_tool("clang")
    work = tmp_path_factory.mktemp("contract")
    source = work / "layout.c"
    source.write_text('#include <linux/types.h>\n#include "socketrace.h"\nstruct event event_layout;\n')
    macros = [f"-D{name}={value}" for name, value in contract.contract_macros().items()]
    obj = work / "layout.o"
    includes = ["-I", str(BPF_DIR / "include"), "-I", str(BPF_DIR)]
    subprocess.run(
        [clang, "-g", "-O0", "-target", "bpf", *includes, *macros, "-c", str(source), "-o", str(obj)],
        check=True,
        timeout=60,
    )
    return load_btf_file(obj)


def _ctypes_members(kind: type, prefix: str = "", base: int = 0) -> list[tuple[str, int, int]]:
    """(path, byte offset, size) of every field of a ctypes struct or union, nested ones too."""
    members = []
    for name, field_type in kind._fields_:  # type: ignore[attr-defined]
        descriptor = getattr(kind, name)
        path, offset = f"{prefix}{name}", base + descriptor.offset
        members.append((path, offset, descriptor.size))
        if isinstance(field_type, type) and issubclass(field_type, (ctypes.Structure, ctypes.Union)):
            members += _ctypes_members(field_type, f"{path}.", offset)
    return members


def test_every_field_of_struct_event_is_where_events_py_reads_it(header_btf: Btf) -> None:
    assert header_btf.size_of(header_btf.struct_id("event")) == ctypes.sizeof(Event)
    mismatches = []
    for path, offset, size in _ctypes_members(Event):
        member = header_btf.member(f"event.{path}")
        if (member.byte_offset, member.size) != (offset, size):
            mismatches.append(f"{path}: C {member.byte_offset}+{member.size}, Python {offset}+{size}")
    assert not mismatches, mismatches


def test_c_fields_all_have_a_python_mirror(header_btf: Btf) -> None:
    """A field added to the C only would shift nothing if placed at the end: its name must exist in Python."""
    python_names = {name for name, _ in Event._fields_}
    for name in ("ts_ns", "sk", "detail", "sock_flags", "comm"):
        assert name in python_names
        header_btf.member(f"event.{name}")
    with pytest.raises(Exception, match="no member"):
        header_btf.member("event.not_a_field")


def test_cookie_layout() -> None:
    cookie = kprobe_multi_cookie(1234, 3, ArgKind.SOCKET, ReturnKind.SIGNED, 4)
    parts = {}
    for name, (shift, width) in (
        ("index", contract.COOKIE_ARG_INDEX),
        ("kind", contract.COOKIE_ARG_KIND),
        ("ret", contract.COOKIE_RET_KIND),
        ("size", contract.COOKIE_RET_SIZE),
        ("probe", contract.COOKIE_PROBE_ID),
    ):
        parts[name] = (cookie >> shift) & ((1 << width) - 1)
    assert parts == {"index": 3, "kind": 1, "ret": 1, "size": 4, "probe": 1234}
    with pytest.raises(ValueError, match="does not fit"):
        kprobe_multi_cookie(1, 16, ArgKind.SOCK)


def test_every_counter_and_kind_reaches_the_c() -> None:
    macros = contract.contract_macros()
    assert macros["COUNTER_MAX"] == str(len(contract.Counter))
    assert all(macros[f"COUNTER_{counter.name}"] == str(int(counter)) for counter in contract.Counter)
    assert all(macros[f"RET_{kind.name}"] == str(int(kind)) for kind in ReturnKind)
    text = (BPF_DIR / "socketrace.c").read_text() + (BPF_DIR / "socketrace.h").read_text()
    enumerations = ("COUNTER_", "RET_", "ARG_")  # passed whole, whether or not the C names each member

    def used(name: str) -> bool:
        part = re.fullmatch(r"COOKIE_(\w+)_(SHIFT|MASK)", name)
        return name in text or (part is not None and f"COOKIE(cookie, {part.group(1)})" in text)

    unused = [name for name in macros if not name.startswith(enumerations) and not used(name)]
    assert not unused, f"contract macros the C never uses: {unused}"


def test_the_formatters_unpack_the_who_part_field_by_field() -> None:
    start, end = contract.WHO_PART
    names = ("func_ip", "cpu", "probe_id", "tgid", "comm")
    assert contract.WHO_STRUCT.size == end - start
    record = Event(func_ip=0x1234, cpu=3, probe_id=7, tgid=42, comm=b"sshd")
    assert contract.WHO_STRUCT.unpack_from(bytes(record), start) == tuple(
        getattr(record, name) if name != "comm" else b"sshd".ljust(contract.COMM_LEN, b"\0") for name in names
    )
