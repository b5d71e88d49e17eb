"""Attaching the program's entry points to the kernel, one class per backend.

Every backend is an :class:`Attacher`: a context manager whose ``attach``
reports what attached and what did not, and whose exit detaches everything,
whatever ended the run, with signals deferred so a second Ctrl+C cannot
abandon a detach halfway. :func:`choose_way` picks the backend: the one asked
for, or the best the kernel (and BCC) offer: kprobe-multi, kprobe, tracepoint.
"""

from __future__ import annotations

import ctypes
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from .. import signals
from ..bpfsys import ProgStats, prog_stats
from ..contract import MapName
from ..discovery import Probe
from ..features import Features
from ..options import AttachWay
from ..program import ProgramPlan, captured_stderr

if TYPE_CHECKING:
    from bcc import BPF
    from tqdm import tqdm

__all__ = ["AttachError", "AttachReport", "Attacher", "available_ways", "choose_way", "make_attacher", "progress_bar"]

log = logging.getLogger("socketrace")


def progress_bar(total: int) -> tqdm:
    """A progress bar on stderr (none when it is not a terminal); tqdm is imported only here, late."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the classic kprobe backend forks to detach
    return tqdm(total=total, unit=" probes", leave=False, disable=None)


class AttachError(Exception):
    """The backend cannot attach on this kernel."""


@dataclass
class AttachReport:
    attached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # probe name -> reason


def available_ways(features: Features) -> list[AttachWay]:
    """The backends this kernel and BCC offer, best first."""
    offered = {
        AttachWay.KPROBE_MULTI: features.kprobe_multi and features.bcc_kprobe_multi,
        AttachWay.KPROBE: features.kprobes,
        AttachWay.TRACEPOINT: True,
    }
    return [way for way, ok in offered.items() if ok]


def choose_way(requested: AttachWay, features: Features) -> AttachWay:
    """The backend to use; a forced backend the kernel lacks is an AttachError."""
    available = available_ways(features)
    if requested is AttachWay.AUTO:
        return available[0]
    if requested not in available:
        if requested is AttachWay.KPROBE_MULTI and features.kprobe_multi:
            raise AttachError("--kprobe-way kprobe-multi: this BCC cannot load kprobe-multi programs (0.25+ can)")
        raise AttachError(f"--kprobe-way {requested.value}: this kernel does not support it")
    return requested


class Attacher(ABC):
    """Attaches the probes of one program; detaches them on exit."""

    #: How the log lines name what is attached and where, as the original's
    #: "Attaching kprobes (via kprobe-multi) to 1090 functions".
    what = "kprobes"
    noun = "functions"

    def __init__(self, bpf: BPF, plan: ProgramPlan) -> None:
        self.bpf = bpf
        self.plan = plan
        self.way = plan.way
        self.report = AttachReport()
        if plan.shared_handler is not None:
            handler = bpf.funcs[plan.shared_handler.name.encode()]
            bpf[MapName.HANDLERS.encode()][ctypes.c_int(0)] = ctypes.c_int(handler.fd)

    def attach(self) -> AttachReport:
        probes = self.plan.probes
        log.info("Attaching %s (via %s) to %d %s", self.what, self.way.value, len(probes), self.noun)
        with progress_bar(len(probes)) as progress:
            self._attach(probes, progress)
        log.info("Attached %s (via %s) to %d %s", self.what, self.way.value, self.report.attached, self.noun)
        for name, reason in sorted(self.report.failed.items()):
            log.warning("Could not attach %s: %s", name, reason)
        return self.report

    @abstractmethod
    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        """Attach every probe, recording successes and failures in self.report."""

    def _attach_each(
        self, probes: tuple[Probe, ...], progress: tqdm, attach_one: Callable[[int, Probe], None], attached: list[str]
    ) -> None:
        """Attach probes one at a time; a refusal is recorded with BCC's reason, not fatal, and
        nothing BCC prints reaches the terminal. Each name goes into ``attached`` as soon as it is
        attached, so that a signal in the middle detaches exactly what was attached."""
        for probe_id, probe in enumerate(probes):
            with captured_stderr() as printed:
                try:
                    attach_one(probe_id, probe)
                    failure = None
                except Exception as err:  # BCC raises bare Exception
                    failure = str(err)
            if failure is None:
                attached.append(probe.name)
                self.report.attached += 1
            else:
                self.report.failed[probe.name] = (printed[0].strip() or failure).splitlines()[0]
            progress.update()

    def entry_stats(self) -> list[ProgStats]:
        """What the kernel counted for each entry program (run counts need kernel.bpf_stats_enabled=1)."""
        return [prog_stats(self.bpf.funcs[entry.name.encode()].fd) for entry in self.plan.entries]

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
        with signals.deferred():
            self.detach()


def make_attacher(bpf: BPF, plan: ProgramPlan, wait_detach: bool = False) -> Attacher:
    """The backend's attacher for a compiled and loaded program."""
    from .kprobe import KprobeAttacher
    from .kprobe_multi import KprobeMultiAttacher
    from .rawtp import RawTracepointAttacher

    if plan.way is AttachWay.KPROBE:
        return KprobeAttacher(bpf, plan, in_background=not wait_detach)
    if plan.way is AttachWay.KPROBE_MULTI:
        return KprobeMultiAttacher(bpf, plan)
    return RawTracepointAttacher(bpf, plan)
