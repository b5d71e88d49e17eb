"""What BCC compiled, kept per kernel, so that a repeat run skips the compiler's work.

BCC compiles the program on every run: under emulation that is most of the
start (7.9 of 12.7 s to ready in a one-vCPU TCG guest), for a program whose
source and macros are usually the ones of the last run. After a full compile
this module keeps each loaded function's instructions, with the places where
BCC wrote a map's fd (a ``ld_imm64`` with ``BPF_PSEUDO_MAP_FD``) recorded by map
name instead. A later run with the same key still has BCC compile the
program's map declarations (``-DMAPS_ONLY``: the same declarations, so the
same maps, key and value layouts, and tables in Python), then loads the
cached instructions with those maps' fds written in. BCC stays the compiler
of record: nothing is compiled elsewhere, and the kernel verifies what is
loaded as always (the kernel's tag of a cached load equals the compiled one's).

The key covers everything the instructions depend on: every file of the
source tree, every ``-D`` macro (filters, BTF field locations, registers),
BCC's version and the kernel's release, version and machine. An entry that
does not fit the program (a map it names is missing, an fd that is not a map)
or that the kernel refuses is a miss: the program is compiled as on a first run.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import logging
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import bpfsys, cache

if TYPE_CHECKING:
    from bcc import BPF

    from .program import Entry

__all__ = ["MAPS_ONLY", "CachedFunction", "cache_key", "capture", "load_cached", "lookup", "store", "table_fds"]

log = logging.getLogger("socketrace")

KIND = "program"
KEEP = 64  # programs kept (one per combination of flags and kernel), newest first: ~30-300 KiB each
MAPS_ONLY = "MAPS_ONLY"  # the macro that leaves the C with its map declarations alone
INSN_SIZE = 8
LD_IMM64 = 0x18  # BPF_LD | BPF_DW | BPF_IMM: two instruction slots, the 64-bit constant in both imm
BPF_PSEUDO_MAP_FD = 1  # ld_imm64's src_reg: imm is a map fd


@dataclass(frozen=True)
class CachedFunction:
    """One function's instructions, and which map's fd each map load takes (instruction index → name)."""

    code: bytes
    map_loads: tuple[tuple[int, str], ...]


def cache_key(tree: Path, cflags: Iterable[str]) -> str:
    """Everything the compiled instructions depend on, as one string (the cache hashes it)."""
    import bcc

    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0" + path.read_bytes() + b"\0")
    uname = platform.uname()
    parts = (digest.hexdigest(), *sorted(cflags), bcc.__version__, uname.release, uname.version, uname.machine)
    return "\0".join(parts)


def _map_loads(code: bytes, map_names: dict[int, str]) -> tuple[tuple[int, str], ...] | None:
    """Each ``ld_imm64`` of a map fd, by map name; None if one loads anything but a known map's fd.

    The instruction's second byte holds dst_reg in its low nibble and src_reg in
    its high one on a little-endian machine (the layout of struct bpf_insn's bit fields).
    """
    loads = []
    index = 0
    while index * INSN_SIZE < len(code):
        insn = code[index * INSN_SIZE : (index + 1) * INSN_SIZE]
        if insn[0] != LD_IMM64:
            index += 1
            continue
        src_reg = insn[1] >> 4
        fd = int.from_bytes(insn[4:8], "little", signed=True)
        if src_reg == BPF_PSEUDO_MAP_FD and fd in map_names:
            loads.append((index, map_names[fd]))
        elif src_reg != 0:  # a map value, a BTF id, an unknown fd: not something this cache can rewrite
            return None
        index += 2
    return tuple(loads)


def table_fds(bpf: BPF) -> dict[int, str]:
    """The fd of every map BCC created for the program, with its name."""
    from bcc.libbcc import lib

    count, name_of, fd_of = lib.bpf_num_tables, lib.bpf_table_name, lib.bpf_table_fd_id
    count.restype, count.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]
    fd_of.restype, fd_of.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]
    return {fd_of(bpf.module, i): name_of(bpf.module, i).decode() for i in range(count(bpf.module))}


def capture(bpf: BPF, names: Iterable[str]) -> dict[str, CachedFunction] | None:
    """The named functions of a fully compiled program, ready to cache; None if one cannot be."""
    if sys.byteorder != "little":
        return None
    map_names = table_fds(bpf)
    functions = {}
    for name in names:
        code = bpf.dump_func(name.encode())
        loads = _map_loads(code, map_names)
        if loads is None:
            log.debug("not caching the program: %s loads something but a map fd", name)
            return None
        functions[name] = CachedFunction(code, loads)
    return functions


def store(key: str, functions: dict[str, CachedFunction]) -> None:
    value = {
        name: {"code": base64.b64encode(function.code).decode(), "maps": [list(load) for load in function.map_loads]}
        for name, function in functions.items()
    }
    cache.store(KIND, key, value, keep=KEEP)


def _parse(value: Any) -> dict[str, CachedFunction]:
    functions = {}
    for name, entry in value.items():
        code = base64.b64decode(entry["code"], validate=True)
        loads = tuple((int(index), str(map_name)) for index, map_name in entry["maps"])
        if not code or len(code) % INSN_SIZE or any(not 0 <= i < len(code) // INSN_SIZE for i, _ in loads):
            raise ValueError(f"cached {name} is not a program")
        functions[str(name)] = CachedFunction(code, loads)
    return functions


def lookup(key: str) -> dict[str, CachedFunction] | None:
    return cache.lookup(KIND, key, _parse)


def _with_map_fds(function: CachedFunction, fds: dict[str, int]) -> bytes:
    code = bytearray(function.code)
    for index, map_name in function.map_loads:
        fd = fds[map_name]  # a KeyError: the maps are not the ones the code was compiled against
        code[index * INSN_SIZE + 4 : index * INSN_SIZE + 8] = fd.to_bytes(4, "little", signed=True)
    return bytes(code)


def load_cached(bpf: BPF, entries: Iterable[Entry], functions: dict[str, CachedFunction]) -> None:
    """Load each entry's cached instructions against the maps of ``bpf`` (compiled with MAPS_ONLY),
    as ``bpf.load_func`` would have: the same name, license and kernel version, and BCC's record of
    the function, so attaching and closing work unchanged. KeyError or OSError: the cache does not fit."""
    from bcc import BPF
    from bcc.libbcc import lib

    fds = {name: fd for fd, name in table_fds(bpf).items()}
    license_name = lib.bpf_module_license(bpf.module)
    kern_version = lib.bpf_module_kern_version(bpf.module)
    for entry in entries:
        code = _with_map_fds(functions[entry.name], fds)
        fd = bpfsys.bpf_prog_load(
            entry.prog_type,
            code,
            expected_attach_type=max(entry.attach_type, 0),
            name=entry.name,
            license_name=license_name,
            kern_version=kern_version,
        )
        bpf.funcs[entry.name.encode()] = BPF.Function(bpf, entry.name.encode(), fd)
