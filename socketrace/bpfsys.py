"""The few ``bpf(2)`` commands BCC does not offer, through ctypes.

Names follow include/uapi/linux/bpf.h. Each call returns a file descriptor
or raises OSError with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
from dataclasses import dataclass

__all__ = [
    "BPF_MAP_TYPE_RINGBUF",
    "BPF_PROG_TYPE_KPROBE",
    "BPF_PROG_TYPE_RAW_TRACEPOINT",
    "BPF_TRACE_KPROBE_MULTI",
    "ProgStats",
    "bpf_link_create_kprobe_multi",
    "bpf_map_create",
    "bpf_prog_load",
    "prog_stats",
    "prog_tag",
]

# Syscall numbers of bpf(2) per machine.
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_MAP_TYPE_RINGBUF = 27
BPF_TRACE_KPROBE_MULTI = 42
BPF_F_KPROBE_MULTI_RETURN = 1

_libc = ctypes.CDLL(None, use_errno=True)


class _bpf_attr_map_create(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


class _bpf_attr_prog_load(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _bpf_attr_link_create_kprobe_multi(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("kprobe_multi_flags", ctypes.c_uint32),
        ("cnt", ctypes.c_uint32),
        ("syms", ctypes.c_uint64),
        ("addrs", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
    ]


class _bpf_attr_info(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


# struct bpf_prog_info: offsets of the fields read (a unit test checks them against kernel BTF).
PROG_INFO_SIZE = 256  # more than any kernel's struct: the kernel fills what it has, the rest stays 0
PROG_INFO_ID = 4
PROG_INFO_TAG = 8  # u8 tag[8]
PROG_INFO_RUN_TIME_NS = 192  # 5.1+, counted while kernel.bpf_stats_enabled=1
PROG_INFO_RUN_CNT = 200
PROG_INFO_RECURSION_MISSES = 208  # 5.12+: runs the kernel skipped because a BPF program was already running


@dataclass(frozen=True)
class ProgStats:
    """What the kernel counts for one loaded program (as ``bpftool prog show`` prints it)."""

    prog_id: int
    run_cnt: int
    run_time_ns: int
    recursion_misses: int


def _bpf(command: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); the attr union is zero-padded to a size every kernel accepts.

    Before 5.11 (commit 3ac1f01b43b6) maps and programs count against RLIMIT_MEMLOCK,
    summed over all of a user's processes: with another tracer's programs still
    held (classic kprobes are removed in the background after a stop), a map or a
    feature probe fails with EPERM. As BCC and libbpf do, lift the limit once and try again.
    """
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(95, f"bpf(2) syscall number unknown on {platform.machine()}")
    buffer = ctypes.create_string_buffer(bytes(attr), 128)
    result = _libc.syscall(number, command, buffer, ctypes.sizeof(buffer))
    if result < 0 and ctypes.get_errno() == errno.EPERM and _lift_memlock_limit():
        result = _libc.syscall(number, command, buffer, ctypes.sizeof(buffer))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def _lift_memlock_limit() -> bool:
    """Raise RLIMIT_MEMLOCK to infinity, or its soft limit to the hard one where that is all that is
    allowed (no CAP_SYS_RESOURCE, as in some containers); False if nothing could be raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    for wanted in ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), (hard, hard)):
        if (soft, hard) == wanted:
            return False
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, wanted)
            return True
        except (OSError, ValueError):
            continue
    return False


def bpf_map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """Create a map; used to probe for map types (e.g. ring buffers)."""
    return _bpf(BPF_MAP_CREATE, _bpf_attr_map_create(map_type, key_size, value_size, max_entries, 0))


def bpf_prog_load(
    prog_type: int,
    instructions: bytes,
    expected_attach_type: int = 0,
    name: str = "",
    license_name: bytes = b"GPL",
    kern_version: int = 0,
) -> int:
    """Load raw instructions (8 bytes each): feature probes, and programs from the compile cache.

    ``name`` is cut to 15 bytes as BCC cuts it, so ``bpftool prog`` shows the same name either way.
    """
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(license_name)
    attr = _bpf_attr_prog_load(
        prog_type=prog_type,
        insn_cnt=len(instructions) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(license_text),
        kern_version=kern_version,
        prog_name=name.encode()[:15],
        expected_attach_type=expected_attach_type,
    )
    return _bpf(BPF_PROG_LOAD, attr)


def bpf_link_create_kprobe_multi(prog_fd: int, symbols: list[str], cookies: list[int], is_return: bool = False) -> int:
    """Attach one kprobe-multi program to many functions at once; returns the link fd."""
    names = [name.encode() for name in symbols]
    syms = (ctypes.c_char_p * len(names))(*names)
    cookie_array = (ctypes.c_uint64 * len(cookies))(*cookies)
    attr = _bpf_attr_link_create_kprobe_multi(
        prog_fd=prog_fd,
        attach_type=BPF_TRACE_KPROBE_MULTI,
        kprobe_multi_flags=BPF_F_KPROBE_MULTI_RETURN if is_return else 0,
        cnt=len(names),
        syms=ctypes.addressof(syms),
        cookies=ctypes.addressof(cookie_array),
    )
    return _bpf(BPF_LINK_CREATE, attr)


def _prog_info(prog_fd: int) -> bytes:
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _bpf_attr_info(prog_fd, PROG_INFO_SIZE, ctypes.addressof(info)))
    return info.raw


def prog_tag(prog_fd: int) -> str:
    """The kernel's tag of a loaded program (``bpftool prog show``'s): a hash of its instructions
    with map fds left out, so two loads of the same code agree whatever their maps' fds."""
    return _prog_info(prog_fd)[PROG_INFO_TAG : PROG_INFO_TAG + 8].hex()


def prog_stats(prog_fd: int) -> ProgStats:
    """The run count, run time and recursion misses of a loaded program."""
    raw = _prog_info(prog_fd)

    def u64(offset: int) -> int:
        return struct.unpack_from("=Q", raw, offset)[0]

    (prog_id,) = struct.unpack_from("=I", raw, PROG_INFO_ID)
    return ProgStats(prog_id, u64(PROG_INFO_RUN_CNT), u64(PROG_INFO_RUN_TIME_NS), u64(PROG_INFO_RECURSION_MISSES))
