"""A small reader of BPF Type Format (BTF) data.

It answers the three questions socketrace asks of a kernel's types: which
functions exist and what their parameters are, what raw tracepoints exist
(``btf_trace_<name>`` typedefs) and their parameters, and at which byte and
bit a member of a struct lives (``sock.__sk_common.skc_dport``).

Input is bytes: a raw BTF file (``/sys/kernel/btf/vmlinux``), the ``.BTF``
section of an ELF image (:func:`load_btf_file` extracts it with pyelftools),
or a module's split BTF read on top of its base (``/sys/kernel/btf/<module>``).
Layout reference: the kernel's Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .contract import ReturnKind

__all__ = [
    "Btf",
    "BtfError",
    "FuncProto",
    "MemberLocation",
    "load_btf_file",
]

BTF_MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow the 12-byte common header, as (fixed, per vlen entry).
_TRAILER_SIZE = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}

_U32 = struct.Struct("<I")
# BTF_INT_ENCODING bits of an INT type.
_INT_SIGNED = 1
_INT_BOOL = 4
# One step of a member path: a name, optionally indexed (``regs[3]``).
_PATH_STEP = re.compile(r"^(\w+)(?:\[(\d+)\])?$")
_HEADER = struct.Struct("<III")

# Qualifiers and typedefs that a type resolution looks through.
_TRANSPARENT = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})


class BtfError(Exception):
    """The data is not BTF, or asks for something it does not contain."""


@dataclass(frozen=True)
class MemberLocation:
    """Where a (possibly nested) member lives inside its outermost struct.

    ``size`` is the byte size of the member's type; for a bitfield,
    ``bits`` is its width and ``bit_offset`` counts from the start of the
    outer struct. For a plain member ``bits == size * 8``.
    """

    bit_offset: int
    bits: int
    size: int

    @property
    def is_bitfield(self) -> bool:
        return self.bits != self.size * 8 or self.bit_offset % 8 != 0

    @property
    def byte_offset(self) -> int:
        return self.bit_offset // 8


@dataclass(frozen=True)
class FuncProto:
    """A function or raw tracepoint: its name, its parameters' type ids, its return type id (0: void)."""

    name: str
    param_types: tuple[int, ...]
    return_type: int = 0


class Btf:
    """Parsed BTF types, with optional split-BTF base (kernel modules)."""

    def __init__(self, data: bytes, base: Btf | None = None) -> None:
        self.base = base
        self._data = memoryview(data)
        if len(data) < 24:
            raise BtfError("too short to be BTF")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("bad BTF magic (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._strings = bytes(self._data[hdr_len + str_off : hdr_len + str_off + str_len])
        self._base_str_len = base.total_strings_len if base else 0
        self.total_strings_len = self._base_str_len + len(self._strings)
        self.first_id = base.next_id if base else 1
        # Type id -> byte offset of its record (index 0 is id first_id).
        self._offsets: list[int] = []
        self._kinds = bytearray()
        self._index_types()
        self.next_id = self.first_id + len(self._offsets)
        self._structs_by_name: dict[str, list[int]] | None = None

    # --- low-level access ----------------------------------------------------

    def _index_types(self) -> None:
        data = self._data
        offsets = self._offsets
        kinds = self._kinds
        trailer = _TRAILER_SIZE
        unpack = _U32.unpack_from
        pos = self._types_start
        end = self._types_end
        while pos < end:
            offsets.append(pos)
            (info,) = unpack(data, pos + 4)
            kind = (info >> 24) & 0x1F
            kinds.append(kind)
            fixed, per = trailer.get(kind, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    def _ids_of_kind(self, kind: int) -> list[int]:
        first = self.first_id
        return [first + index for index, found in enumerate(self._kinds) if found == kind]

    def string(self, offset: int) -> str:
        """Name at a string-section offset, following split BTF to the base."""
        if offset < self._base_str_len:
            assert self.base is not None
            return self.base.string(offset)
        offset -= self._base_str_len
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode()

    def _record(self, type_id: int) -> tuple[Btf, int]:
        if type_id < self.first_id:
            if self.base is None:
                raise BtfError(f"type id {type_id} is void or out of range")
            return self.base._record(type_id)
        try:
            return self, self._offsets[type_id - self.first_id]
        except IndexError:
            raise BtfError(f"type id {type_id} is out of range") from None

    def header(self, type_id: int) -> tuple[str, int, int, int, bool]:
        """(name, kind, vlen, size_or_type, kind_flag) of a type id."""
        owner, pos = self._record(type_id)
        name_off, info, size_or_type = struct.unpack_from("<III", owner._data, pos)
        return (
            owner.string(name_off),
            (info >> 24) & 0x1F,
            info & 0xFFFF,
            size_or_type,
            bool(info >> 31),
        )

    def _entries(self, type_id: int, entry_format: str) -> list[tuple[int, ...]]:
        owner, pos = self._record(type_id)
        (info,) = struct.unpack_from("<I", owner._data, pos + 4)
        entry = struct.Struct(entry_format)
        fixed, _ = _TRAILER_SIZE.get((info >> 24) & 0x1F, (0, 0))
        start = pos + 12 + fixed
        return [entry.unpack_from(owner._data, start + i * entry.size) for i in range(info & 0xFFFF)]

    def ids(self) -> range:
        """Type ids defined by this BTF (not its base)."""
        return range(self.first_id, self.next_id)

    def struct_ids(self, name: str) -> list[int]:
        """Ids of structs and unions named ``name``, in the base first."""
        if self._structs_by_name is None:
            by_name: dict[str, list[int]] = {}
            for type_id in self._ids_of_kind(KIND_STRUCT) + self._ids_of_kind(KIND_UNION):
                by_name.setdefault(self.header(type_id)[0], []).append(type_id)
            self._structs_by_name = by_name
        found = self.base.struct_ids(name) if self.base else []
        return found + self._structs_by_name.get(name, [])

    # --- type resolution -----------------------------------------------------

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while type_id:
            _, kind, _, next_id, _ = self.header(type_id)
            if kind not in _TRANSPARENT:
                return type_id
            type_id = next_id
        return 0

    def pointee_struct(self, type_id: int) -> tuple[str, bool] | None:
        """For ``[const] struct X *``: (X, pointee is const); else None."""
        type_id = self.resolve(type_id)
        if not type_id:
            return None
        _, kind, _, target, _ = self.header(type_id)
        if kind != KIND_PTR:
            return None
        is_const = False
        while target:
            name, kind, _, next_id, _ = self.header(target)
            if kind == KIND_CONST:
                is_const = True
            elif kind not in _TRANSPARENT:
                return (name, is_const) if kind in (KIND_STRUCT, KIND_FWD) else None
            target = next_id
        return None

    def size_of(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        _, kind, _, size_or_type, _ = self.header(type_id)
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _index, count = self._array(type_id)
            return self.size_of(elem) * count
        return size_or_type

    def _array(self, type_id: int) -> tuple[int, int, int]:
        owner, pos = self._record(type_id)
        return struct.unpack_from("<III", owner._data, pos + 12)

    # --- the questions -------------------------------------------------------

    def functions(self, wanted: Callable[[tuple[int, ...]], bool] | None = None) -> list[FuncProto]:
        """Every FUNC defined here, with its prototype's parameter types.

        ``wanted`` sees the parameter types first; names are decoded only for
        the functions it keeps (a kernel has some 60,000 functions).
        """
        funcs = []
        data = self._data
        first = self.first_id
        offsets = self._offsets
        for type_id in self._ids_of_kind(KIND_FUNC):
            name_off, _info, proto = _HEADER.unpack_from(data, offsets[type_id - first])
            params = self._params(proto)
            if wanted is None or wanted(params):
                funcs.append(FuncProto(self.string(name_off), params, self.header(proto)[3]))
        return funcs

    def return_kind(self, type_id: int) -> tuple[ReturnKind, int]:
        """How a function returning this type fills the return register, and how many of its bytes count.

        ``int`` is SIGNED of 4 bytes (the register's upper half is not part of it),
        ``bool`` BOOL, a pointer POINTER; void and what is not a scalar VOID.
        """
        type_id = self.resolve(type_id)
        if not type_id:
            return ReturnKind.VOID, 0
        _, kind, _, size, kind_flag = self.header(type_id)
        if kind == KIND_PTR:
            return ReturnKind.POINTER, 8
        if kind in (KIND_ENUM, KIND_ENUM64):
            # kind_flag marks a signed enum (5.18+); older BTF leaves it 0, and enums rarely go negative.
            return (ReturnKind.SIGNED if kind_flag else ReturnKind.UNSIGNED), size
        if kind == KIND_INT:
            owner, pos = self._record(type_id)
            (encoding,) = _U32.unpack_from(owner._data, pos + 12)
            flags = encoding >> 24
            if flags & _INT_BOOL:
                return ReturnKind.BOOL, size
            return (ReturnKind.SIGNED if flags & _INT_SIGNED else ReturnKind.UNSIGNED), size
        return ReturnKind.VOID, 0

    def pointer_ids(self, struct_names: set[str]) -> dict[int, str]:
        """Type ids that are pointers to one of the named structs (possibly
        const, possibly through typedefs and qualifiers), to the struct's name.
        Split BTF (a module's) also uses its base's pointer types."""
        pointers: dict[int, str] = self.base.pointer_ids(struct_names) if self.base else {}
        for type_id in self._ids_of_kind(KIND_PTR):
            pointee = self.pointee_struct(type_id)
            if pointee and pointee[0] in struct_names:
                pointers[type_id] = pointee[0]
        for kind in sorted(_TRANSPARENT):
            for type_id in self._ids_of_kind(kind):
                target = self.resolve(type_id)
                if target in pointers:
                    pointers[type_id] = pointers[target]
        return pointers

    def raw_tracepoints(self) -> list[FuncProto]:
        """Raw tracepoints, from their ``btf_trace_<name>`` typedefs.

        The first prototype parameter is the tracepoint's private ``void *``
        data, so the returned ``param_types[i]`` is ``ctx->args[i]``.
        """
        tracepoints = []
        for type_id in self._ids_of_kind(KIND_TYPEDEF):
            name, _, _, target, _ = self.header(type_id)
            if not name.startswith("btf_trace_"):
                continue
            _, ptr_kind, _, proto, _ = self.header(target)
            if ptr_kind != KIND_PTR:
                continue
            params = self._params(proto)
            tracepoints.append(FuncProto(name[len("btf_trace_") :], params[1:]))
        return tracepoints

    def _params(self, proto_id: int) -> tuple[int, ...]:
        owner, pos = self._record(proto_id)
        (info,) = _U32.unpack_from(owner._data, pos + 4)
        if (info >> 24) & 0x1F != KIND_FUNC_PROTO:
            return ()
        # Entries are (name_off, type) pairs; keep every second u32.
        count = info & 0xFFFF
        return struct.unpack_from(f"<{2 * count}I", owner._data, pos + 12)[1::2]

    def struct_id(self, name: str) -> int:
        """Id of the struct or union called ``name``."""
        found = self.struct_ids(name)
        if not found:
            raise BtfError(f"no struct {name}")
        return found[0]

    def member(self, path: str) -> MemberLocation:
        """Locate ``struct.member.member...``, looking through anonymous members;
        a step may index an array (``pt_regs.regs[3]``).

        Raises BtfError when any step is missing, which callers use to probe
        for layouts that differ between kernel versions.
        """
        struct_name, *members = path.split(".")
        if not members:
            raise BtfError(f"{path}: no member named")
        type_id = self.struct_id(struct_name)
        bit_offset = 0
        bits = 0
        for step in members:
            parsed = _PATH_STEP.match(step)
            if parsed is None:
                raise BtfError(f"{path}: {step!r} is not a member name")
            member, index = parsed.groups()
            found = self._find_member(type_id, member)
            if found is None:
                raise BtfError(f"{path}: no member {member}")
            member_type, member_bits, member_bitfield = found
            bit_offset += member_bits
            type_id = self.resolve(member_type)
            bits = member_bitfield
            if index is not None:
                if self.header(type_id)[1] != KIND_ARRAY:
                    raise BtfError(f"{path}: {member} is not an array")
                elem, _index_type, count = self._array(type_id)
                if int(index) >= count:
                    raise BtfError(f"{path}: {member} has {count} elements")
                bit_offset += int(index) * self.size_of(elem) * 8
                type_id = self.resolve(elem)
        size = self.size_of(type_id)
        return MemberLocation(bit_offset, bits or size * 8, size)

    def _find_member(self, type_id: int, member: str) -> tuple[int, int, int] | None:
        """(type id, bit offset, bitfield width or 0) of ``member``, recursing
        into anonymous structs and unions."""
        _, kind, _, _, kind_flag = self.header(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            return None
        owner, _ = self._record(type_id)
        for name_off, member_type, offset in self._entries(type_id, "<III"):
            name = owner.string(name_off)
            if kind_flag:
                bit_offset, bitfield = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield = offset, self._int_bitfield(member_type)
            if name == member:
                return member_type, bit_offset, bitfield
            if not name:
                inner = self._find_member(self.resolve(member_type), member)
                if inner is not None:
                    return inner[0], bit_offset + inner[1], inner[2]
        return None

    def _int_bitfield(self, type_id: int) -> int:
        """Width of an old-style bitfield (encoded in the INT type), else 0."""
        type_id = self.resolve(type_id)
        _, kind, _, size, _ = self.header(type_id)
        if kind != KIND_INT:
            return 0
        owner, pos = self._record(type_id)
        (encoding,) = struct.unpack_from("<I", owner._data, pos + 12)
        nr_bits = encoding & 0xFF
        return nr_bits if nr_bits != size * 8 else 0


def load_btf_file(path: str | Path, base: Btf | None = None) -> Btf:
    """Read raw BTF, or the ``.BTF`` section of an ELF file (e.g. a vmlinux)."""
    data = Path(path).read_bytes()
    if data[:4] == b"\x7fELF":
        data = _elf_btf_section(path)
    return Btf(data, base)


def _elf_btf_section(path: str | Path) -> bytes:
    from elftools.elf.elffile import ELFFile  # only needed for ELF input

    with open(path, "rb") as elf_file:
        section = ELFFile(elf_file).get_section_by_name(".BTF")
        if section is None:
            raise BtfError(f"{path}: ELF file has no .BTF section")
        return section.data()
