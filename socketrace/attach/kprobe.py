"""Classic kprobes: one perf event per function, detached in parallel.

Each kprobe is removed with an RCU grace period of its own when closed one at
a time (about 13 per second in an emulated guest). Closing them from many
threads at once lets concurrent removals share grace periods.
"""

from __future__ import annotations

import os
import resource
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..discovery import Probe
from ..options import AttachWay
from ..program import kprobe_entry_name
from . import Attacher

if TYPE_CHECKING:
    from bcc import BPF

__all__ = ["KprobeAttacher", "close_in_parallel"]

DETACH_THREADS = 64
FDS_PER_PROBE = 1  # the perf event; BCC holds the program fds once per entry point
SPARE_FDS = 256


def close_in_parallel(fds: list[int], threads: int = DETACH_THREADS, progress: tqdm | None = None) -> None:
    """Close file descriptors from a thread pool; os.close releases the GIL while the kernel waits."""

    def close(fd: int) -> None:
        os.close(fd)
        if progress is not None:
            progress.update()

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(close, fds))


class KprobeAttacher(Attacher):
    """Attaches ``kprobe_arg<i>_kind<k>`` to each function through BCC."""

    def __init__(self, bpf: BPF, way: AttachWay, detach_threads: int = DETACH_THREADS) -> None:
        super().__init__(bpf, way)
        self.detach_threads = detach_threads
        self._attached: list[str] = []

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        from bcc import BPF

        _raise_fd_limit(len(probes) * FDS_PER_PROBE + SPARE_FDS)
        self.install_shared_handler(BPF.KPROBE)

        def attach_one(_probe_id: int, probe: Probe) -> None:
            self.bpf.attach_kprobe(event=probe.name.encode(), fn_name=kprobe_entry_name(probe).encode())

        self._attached = self._attach_each(probes, progress, attach_one)

    def detach(self) -> None:
        if not self._attached:
            return
        self._log_detaching(len(self._attached), self.noun)
        # Take the perf fds out of BCC's bookkeeping, so its own cleanup does not close them again.
        fds = [fd for fn_fds in self.bpf.kprobe_fds.values() for fd in fn_fds.values()]
        self.bpf.kprobe_fds.clear()
        with tqdm(total=len(fds), unit=" probes", leave=False, disable=None) as progress:
            close_in_parallel(fds, self.detach_threads, progress)
        self._attached.clear()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )
