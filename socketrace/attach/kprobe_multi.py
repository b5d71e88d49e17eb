"""kprobe-multi: one BPF link for every function (5.18+, CONFIG_FPROBE).

BCC has no API for it: the entry function is loaded with the kprobe-multi
attach type and linked with ``bpf(BPF_LINK_CREATE)``. Each function gets a
cookie naming it and its socket argument. The kernel refuses the whole link
(ESRCH) when one symbol cannot be probed; such symbols are found by
bisection, reported, and left out.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from tqdm import tqdm

from .. import bpfsys
from ..discovery import Probe
from ..options import AttachWay
from ..program import kprobe_multi_cookie
from . import Attacher, AttachError

if TYPE_CHECKING:
    from bcc import BPF

__all__ = ["KprobeMultiAttacher"]

ENTRY_FUNCTION = b"kprobe_multi_entry"
# The kernel cannot do kprobe-multi at all: fall back to another backend.
UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class KprobeMultiAttacher(Attacher):
    """All functions in as few links as the kernel accepts (one, unless symbols are refused)."""

    def __init__(self, bpf: BPF, way: AttachWay, is_return: bool = False) -> None:
        super().__init__(bpf, way)
        self.is_return = is_return
        self._links: list[tuple[int, int]] = []  # (link fd, functions in it)

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        from bcc import BPF

        entry = self.bpf.load_func(ENTRY_FUNCTION, BPF.KPROBE, attach_type=bpfsys.BPF_TRACE_KPROBE_MULTI)
        batch = [(probe.name, kprobe_multi_cookie(probe_id, probe)) for probe_id, probe in enumerate(probes)]
        self._link(entry.fd, batch, progress)

    def _link(self, prog_fd: int, batch: list[tuple[str, int]], progress: tqdm) -> None:
        """Link a batch; on ESRCH split it to find the refused symbols."""
        try:
            fd = bpfsys.bpf_link_create_kprobe_multi(
                prog_fd, [name for name, _ in batch], [cookie for _, cookie in batch], self.is_return
            )
        except OSError as err:
            if err.errno in UNSUPPORTED and not self._links and not self.report.failed:
                raise AttachError(f"kprobe-multi link refused: {err.strerror}") from None
            if len(batch) == 1:
                self.report.failed[batch[0][0]] = err.strerror or str(err)
                progress.update()
                return
            middle = len(batch) // 2
            self._link(prog_fd, batch[:middle], progress)
            self._link(prog_fd, batch[middle:], progress)
            return
        self._links.append((fd, len(batch)))
        self.report.attached += len(batch)
        progress.update(len(batch))

    def detach(self) -> None:
        if not self._links:
            return
        functions = sum(count for _, count in self._links)
        self._log_detaching(len(self._links), f"bpf links ({functions} functions)")
        while self._links:
            os.close(self._links.pop()[0])
