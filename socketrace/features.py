"""What the running kernel can do, found by trying rather than by version numbers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys

__all__ = ["Features", "detect_features"]

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")


@dataclass(frozen=True)
class Features:
    """Kernel capabilities the later stages choose between."""

    ring_buffer: bool
    kprobes: bool


def detect_features() -> Features:
    return Features(ring_buffer=_has_ring_buffer(), kprobes=KPROBE_PMU.exists())


def _has_ring_buffer() -> bool:
    """BPF_MAP_TYPE_RINGBUF (5.8+): create the smallest one and close it."""
    try:
        fd = bpfsys.bpf_map_create(bpfsys.BPF_MAP_TYPE_RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE"))
    except OSError:
        return False
    os.close(fd)
    return True
