"""What the running kernel can do, found by trying rather than by version numbers.

Each probe loads or creates the smallest object that needs the feature and
closes it at once; a refusal means the feature is missing.
"""

from __future__ import annotations

import inspect
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys

__all__ = ["AVAILABLE_FILTER_FUNCTIONS", "Features", "bcc_loads_kprobe_multi", "detect_features", "verifiable_kinds"]

# What ftrace can patch, hence what kprobes can attach to (tracefs, or tracefs under debugfs).
AVAILABLE_FILTER_FUNCTIONS = (
    "/sys/kernel/tracing/available_filter_functions",
    "/sys/kernel/debug/tracing/available_filter_functions",
)

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")
BPF_FUNC_GET_FUNC_IP = 173


def _insn(code: int, regs: int = 0, offset: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, regs, offset, imm)


# r0 = 0; exit
_RETURN_ZERO = _insn(0xB7) + _insn(0x95)
# call bpf_get_func_ip(ctx); r0 = 0; exit
_CALL_GET_FUNC_IP = _insn(0x85, imm=BPF_FUNC_GET_FUNC_IP) + _RETURN_ZERO


@dataclass(frozen=True)
class Features:
    """Kernel capabilities the later stages choose between."""

    ring_buffer: bool
    kprobes: bool
    kprobe_multi: bool = False
    get_func_ip: bool = False  # bpf_get_func_ip() in classic kprobes (5.15+)
    bcc_kprobe_multi: bool = False  # BCC can load a program for kprobe-multi (load_func's attach_type, 0.25+)


def detect_features(with_bcc: bool = True) -> Features:
    """What the kernel (and, ``with_bcc``, BCC) can do. Without BCC the answer comes sooner:
    importing BCC loads LLVM, which the caller may be doing meanwhile in another thread."""
    kprobes = KPROBE_PMU.exists()
    return Features(
        ring_buffer=_has_ring_buffer(),
        kprobes=kprobes,
        kprobe_multi=kprobes and _has_kprobe_multi(),
        get_func_ip=_can_load(_CALL_GET_FUNC_IP),
        bcc_kprobe_multi=with_bcc and bcc_loads_kprobe_multi(),
    )


def verifiable_kinds() -> list[str]:
    """Backends whose programs this kernel's verifier accepts, whether or not it can attach them
    (a kernel without CONFIG_KPROBES still verifies kprobe programs): what a load-only test can cover."""
    kinds = ["tracepoint"]
    if _can_load(_RETURN_ZERO):
        kinds.append("kprobe")
        fd = _loads(_RETURN_ZERO, bpfsys.BPF_TRACE_KPROBE_MULTI)
        if fd is not None:
            os.close(fd)
            if bcc_loads_kprobe_multi():
                kinds.append("kprobe-multi")
    return kinds


def bcc_loads_kprobe_multi() -> bool:
    """BCC before 0.25 loads every program with no expected attach type, which kprobe-multi needs."""
    try:
        from bcc import BPF
    except ImportError:
        return False
    return "attach_type" in inspect.signature(BPF.load_func).parameters


def _has_ring_buffer() -> bool:
    """BPF_MAP_TYPE_RINGBUF (5.8+): create the smallest one and close it."""
    try:
        fd = bpfsys.bpf_map_create(bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        return False
    os.close(fd)
    return True


def _loads(instructions: bytes, expected_attach_type: int = 0) -> int | None:
    """Load a kprobe program; its fd, or None when the kernel refuses it."""
    try:
        return bpfsys.bpf_prog_load(bpfsys.BPF_PROG_TYPE_KPROBE, instructions, expected_attach_type)
    except OSError:
        return None


def _can_load(instructions: bytes) -> bool:
    fd = _loads(instructions)
    if fd is None:
        return False
    os.close(fd)
    return True


def _has_kprobe_multi() -> bool:
    """Attach a do-nothing kprobe-multi program to one traceable function (5.18+, CONFIG_FPROBE)."""
    symbol = _first_traceable_function()
    prog_fd = _loads(_RETURN_ZERO, bpfsys.BPF_TRACE_KPROBE_MULTI)
    if symbol is None or prog_fd is None:
        return False
    try:
        os.close(bpfsys.bpf_link_create_kprobe_multi(prog_fd, [symbol], [0]))
        return True
    except OSError:
        return False
    finally:
        os.close(prog_fd)


def _first_traceable_function() -> str | None:
    for path in AVAILABLE_FILTER_FUNCTIONS:
        try:
            with open(path) as functions:
                for line in functions:
                    name = line.split()[0]
                    if "." not in name:
                        return name
        except OSError:
            continue
    return None
