"""Attaching the program's entry points to the kernel, one class per backend.

Every backend is an :class:`Attacher`: a context manager whose ``attach``
reports what attached and what did not, and whose exit detaches everything,
whatever ended the run. :func:`choose_way` picks the backend: the one asked
for, or the best the kernel has (kprobe-multi, then kprobe, then tracepoint).
"""

from __future__ import annotations

import ctypes
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..discovery import Probe
from ..features import Features
from ..options import AttachWay

if TYPE_CHECKING:
    from bcc import BPF

__all__ = ["AttachError", "AttachReport", "Attacher", "choose_way", "make_attacher"]

log = logging.getLogger("socketrace")


class AttachError(Exception):
    """The backend cannot attach on this kernel."""


@dataclass
class AttachReport:
    attached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # probe name -> reason


def choose_way(requested: AttachWay, features: Features) -> AttachWay:
    """The backend to use; a forced backend the kernel lacks is an AttachError."""
    available = {
        AttachWay.KPROBE_MULTI: features.kprobe_multi,
        AttachWay.KPROBE: features.kprobes,
        AttachWay.TRACEPOINT: True,
    }
    if requested is AttachWay.AUTO:
        return next(way for way, ok in available.items() if ok)
    if not available.get(requested, False):
        raise AttachError(f"--kprobe-way {requested.value}: this kernel does not support it")
    return requested


class Attacher(ABC):
    """Attaches the probes of one program; detaches them on exit."""

    #: How the log lines name what is attached and where, as the original's
    #: "Attaching kprobes (via kprobe-multi) to 1090 functions".
    what = "kprobes"
    noun = "functions"

    def __init__(self, bpf: BPF, way: AttachWay) -> None:
        self.bpf = bpf
        self.way = way
        self.report = AttachReport()

    def install_shared_handler(self, prog_type: int) -> None:
        """Load the handler the entry points tail-call, for their program type."""
        handler = self.bpf.load_func(b"shared_handler", prog_type)
        self.bpf["handlers"][ctypes.c_int(0)] = ctypes.c_int(handler.fd)

    def attach(self, probes: tuple[Probe, ...]) -> AttachReport:
        log.info("Attaching %s (via %s) to %d %s", self.what, self.way.value, len(probes), self.noun)
        with tqdm(total=len(probes), unit=" probes", leave=False, disable=None) as progress:
            self._attach(probes, progress)
        log.info("Attached %s (via %s) to %d %s", self.what, self.way.value, self.report.attached, self.noun)
        for name, reason in sorted(self.report.failed.items()):
            log.warning("Could not attach %s: %s", name, reason)
        return self.report

    @abstractmethod
    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        """Attach every probe, recording successes and failures in self.report."""

    def _attach_each(
        self, probes: tuple[Probe, ...], progress: tqdm, attach_one: Callable[[int, Probe], None]
    ) -> list[str]:
        """Attach probes one at a time; a refusal is recorded, not fatal. Returns the attached names."""
        attached = []
        for probe_id, probe in enumerate(probes):
            try:
                attach_one(probe_id, probe)
            except Exception as err:  # BCC raises bare Exception
                self.report.failed[probe.name] = str(err).splitlines()[0]
            else:
                attached.append(probe.name)
                self.report.attached += 1
            progress.update()
        return attached

    def _log_detaching(self, count: int, noun: str) -> None:
        log.info("Detaching %s (via %s) from %d %s", self.what, self.way.value, count, noun)

    @abstractmethod
    def detach(self) -> None:
        """Detach everything attached so far; safe to call twice."""

    def __enter__(self) -> Attacher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.detach()


def make_attacher(bpf: BPF, way: AttachWay, with_returns: bool = False) -> Attacher:
    """The backend's attacher; ``with_returns`` adds the return probes (kprobe-multi)."""
    from .kprobe import KprobeAttacher
    from .kprobe_multi import KprobeMultiAttacher
    from .rawtp import RawTracepointAttacher

    if way is AttachWay.KPROBE_MULTI:
        return KprobeMultiAttacher(bpf, way, with_returns)
    backends: dict[AttachWay, type[KprobeAttacher | RawTracepointAttacher]] = {
        AttachWay.KPROBE: KprobeAttacher,
        AttachWay.TRACEPOINT: RawTracepointAttacher,
    }
    return backends[way](bpf, way)
