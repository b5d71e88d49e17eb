"""kprobe-multi: one BPF link for every function (5.18+, CONFIG_FPROBE).

BCC has no API for it: the entry function is loaded with the kprobe-multi
attach type (by the program stage) and linked with ``bpf(BPF_LINK_CREATE)``.
Each function gets a cookie naming it, its socket argument and its return
type. The kernel refuses the whole link (ESRCH) when one symbol cannot be
probed; such symbols are found by bisection, reported, and left out.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from .. import bpfsys, contract
from ..discovery import Probe
from ..program import ProgramPlan
from . import Attacher, AttachError

if TYPE_CHECKING:
    from bcc import BPF
    from tqdm import tqdm

__all__ = ["KprobeMultiAttacher"]

# The kernel cannot do kprobe-multi at all (auto-detection probed it; a forced --kprobe-way may not have).
UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


class KprobeMultiAttacher(Attacher):
    """All functions in as few links as the kernel accepts (one, unless symbols are refused)."""

    def __init__(self, bpf: BPF, plan: ProgramPlan) -> None:
        super().__init__(bpf, plan)
        self._links: list[tuple[int, int]] = []  # (link fd, functions it enters; 0 for return links)

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        batch = [(probe.name, _cookie(probe_id, probe)) for probe_id, probe in enumerate(probes)]
        fds = {entry.name: self.bpf.funcs[entry.name.encode()].fd for entry in self.plan.entries}
        if contract.RETURN_KPROBE_MULTI in fds:
            # Returns first, and entries only where the return is linked: a call remembered at
            # entry whose return is never seen would stay in the calls table.
            refused: dict[str, str] = {}
            self._link(fds[contract.RETURN_KPROBE_MULTI], batch, refused, is_return=True)
            self.report.failed.update({name: f"return probe: {reason}" for name, reason in refused.items()})
            batch = [item for item in batch if item[0] not in refused]
            progress.update(len(refused))
        self._link(fds[contract.ENTRY_KPROBE_MULTI], batch, self.report.failed, progress)

    def _link(
        self,
        prog_fd: int,
        batch: list[tuple[str, int]],
        refused: dict[str, str],
        progress: tqdm | None = None,
        is_return: bool = False,
    ) -> None:
        """Link a batch; on ESRCH split it to find the symbols the kernel refuses (into ``refused``)."""
        if not batch:
            return
        try:
            fd = bpfsys.bpf_link_create_kprobe_multi(
                prog_fd, [name for name, _ in batch], [cookie for _, cookie in batch], is_return
            )
        except OSError as err:
            if err.errno in UNSUPPORTED and not self._links and not refused:
                raise AttachError(f"kprobe-multi link refused: {err.strerror}") from None
            if len(batch) == 1:
                refused[batch[0][0]] = err.strerror or str(err)
                if progress is not None:
                    progress.update()
                return
            middle = len(batch) // 2
            self._link(prog_fd, batch[:middle], refused, progress, is_return)
            self._link(prog_fd, batch[middle:], refused, progress, is_return)
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


def _cookie(probe_id: int, probe: Probe) -> int:
    return contract.kprobe_multi_cookie(probe_id, probe.arg_index, probe.arg_kind, probe.ret_kind, probe.ret_size)
