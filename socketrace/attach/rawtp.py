"""Raw tracepoints that take a socket: the backend for kernels without kprobes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..contract import rawtp_entry_name
from ..discovery import Probe
from ..program import ProgramPlan
from . import Attacher, progress_bar

if TYPE_CHECKING:
    from bcc import BPF
    from tqdm import tqdm

__all__ = ["RawTracepointAttacher"]


class RawTracepointAttacher(Attacher):
    """One program per tracepoint (``rawtp_<probe id>``), since raw tracepoints carry no cookie."""

    what = "probes"
    noun = "raw tracepoints"

    def __init__(self, bpf: BPF, plan: ProgramPlan) -> None:
        super().__init__(bpf, plan)
        self._attached: list[str] = []

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        def attach_one(probe_id: int, probe: Probe) -> None:
            self.bpf.attach_raw_tracepoint(tp=probe.name.encode(), fn_name=rawtp_entry_name(probe_id).encode())

        self._attach_each(probes, progress, attach_one, self._attached)

    def detach(self) -> None:
        if not self._attached:
            return
        self._log_detaching(len(self._attached), self.noun)
        with progress_bar(len(self._attached)) as progress:
            while self._attached:
                self.bpf.detach_raw_tracepoint(tp=self._attached.pop().encode())
                progress.update()
