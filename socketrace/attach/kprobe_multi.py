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
RETURN_FUNCTION = b"kprobe_multi_return"
# The kernel cannot do kprobe-multi at all: fall back to another backend.
UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class KprobeMultiAttacher(Attacher):
    """All functions in as few links as the kernel accepts (one, unless symbols are refused)."""

    def __init__(self, bpf: BPF, way: AttachWay, with_returns: bool = False) -> None:
        super().__init__(bpf, way)
        self.with_returns = with_returns
        self._links: list[tuple[int, int]] = []  # (link fd, functions it enters; 0 for return links)

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        from bcc import BPF

        batch = [(probe.name, kprobe_multi_cookie(probe_id, probe)) for probe_id, probe in enumerate(probes)]
        if self.with_returns:
            # Returns first, so that no call is remembered at entry without its return being seen.
            exit_prog = self.bpf.load_func(RETURN_FUNCTION, BPF.KPROBE, attach_type=bpfsys.BPF_TRACE_KPROBE_MULTI)
            self._link(exit_prog.fd, batch, is_return=True)
        entry = self.bpf.load_func(ENTRY_FUNCTION, BPF.KPROBE, attach_type=bpfsys.BPF_TRACE_KPROBE_MULTI)
        self._link(entry.fd, batch, progress)

    def _link(
        self, prog_fd: int, batch: list[tuple[str, int]], progress: tqdm | None = None, is_return: bool = False
    ) -> None:
        """Link a batch; on ESRCH split it to find the refused symbols. Entry links make the report."""
        try:
            fd = bpfsys.bpf_link_create_kprobe_multi(
                prog_fd, [name for name, _ in batch], [cookie for _, cookie in batch], is_return
            )
        except OSError as err:
            if err.errno in UNSUPPORTED and not self._links and not self.report.failed:
                raise AttachError(f"kprobe-multi link refused: {err.strerror}") from None
            if len(batch) == 1:
                if not is_return:
                    self.report.failed[batch[0][0]] = err.strerror or str(err)
                if progress is not None:
                    progress.update()
                return
            middle = len(batch) // 2
            self._link(prog_fd, batch[:middle], progress, is_return)
            self._link(prog_fd, batch[middle:], progress, is_return)
            return
        self._links.append((fd, 0 if is_return else len(batch)))
        if not is_return:
            self.report.attached += len(batch)
        if progress is not None:
            progress.update(len(batch))

    def detach(self) -> None:
        if not self._links:
            return
        functions = sum(count for _, count in self._links)
        self._log_detaching(len(self._links), f"bpf links ({functions} functions)")
        while self._links:
            os.close(self._links.pop()[0])
