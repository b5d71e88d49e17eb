"""Classic kprobes: one perf event per function, removed out of the user's way.

Removing a kprobe is slow and the kernel serializes removals
(``perf_kprobe_destroy()`` holds ``event_mutex`` across an RCU grace period):
about 1,500 take a minute in an emulated guest, and threads barely help. The
program is already stopped when the run ends (its control flag no longer says
TRACING, so every hit returns at once), so by default the perf events are
handed to a child process in a session of its own, which closes them and
exits; the shell gets its prompt back at once. ``--wait-detach`` closes them
in the foreground instead, from a pool of threads that share grace periods
where the kernel lets them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..contract import kprobe_entry_name
from ..discovery import Probe
from ..program import ProgramPlan
from . import Attacher, progress_bar

if TYPE_CHECKING:
    from bcc import BPF
    from tqdm import tqdm

__all__ = ["KprobeAttacher", "close_in_parallel"]

log = logging.getLogger("socketrace")

DETACH_THREADS = 64
SPARE_FDS = 256  # besides one perf event per probe


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

    def __init__(
        self, bpf: BPF, plan: ProgramPlan, in_background: bool = True, detach_threads: int = DETACH_THREADS
    ) -> None:
        super().__init__(bpf, plan)
        self.in_background = in_background
        self.detach_threads = detach_threads
        self.remover_pid: int | None = None  # the child removing the probes, when in the background

    def _attach(self, probes: tuple[Probe, ...], progress: tqdm) -> None:
        _raise_fd_limit(len(probes) + SPARE_FDS)
        _raise_bcc_probe_limit(len(probes) + SPARE_FDS)

        def attach_one(_probe_id: int, probe: Probe) -> None:
            entry = kprobe_entry_name(probe.arg_index, probe.arg_kind)
            self.bpf.attach_kprobe(event=probe.name.encode(), fn_name=entry.encode())

        self._attach_each(probes, progress, attach_one, [])  # BCC's kprobe_fds records them

    def detach(self) -> None:
        # Take the perf fds out of BCC's bookkeeping, so its own cleanup does not close them again.
        fds = _perf_fds(self.bpf.kprobe_fds)
        if not fds:
            return
        self.bpf.kprobe_fds.clear()
        if self.in_background:
            try:
                self.remover_pid = _remove_in_background(fds)
            except OSError as err:
                log.warning("Cannot fork to remove the kprobes in the background (%s): removing them now", err.strerror)
            else:
                log.info(
                    "Removing %d kprobes in the background (pid %d); --wait-detach waits for it instead",
                    len(fds),
                    self.remover_pid,
                )
                return
        self._log_detaching(len(fds), self.noun)
        with progress_bar(len(fds)) as progress:
            close_in_parallel(fds, self.detach_threads, progress)


def _perf_fds(kprobe_fds: dict) -> list[int]:
    """The perf event fds BCC holds: {event: {function: fd}} since 0.19, {event: fd} before (0.18)."""
    return [fd for value in kprobe_fds.values() for fd in (value.values() if isinstance(value, dict) else [value])]


def _remove_in_background(fds: list[int]) -> int:
    """Fork a child that closes the perf events and exits; the parent's copies are closed at once."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()  # out of the terminal's process group: Ctrl+C is the parent's business
            devnull = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)  # a pipe or file of the user's must not wait for this child
            keep = set(fds) | {0, 1, 2}
            for name in os.listdir("/proc/self/fd"):
                if int(name) not in keep:
                    with contextlib.suppress(OSError):  # the listing's own fd is gone already
                        os.close(int(name))
            close_in_parallel(fds)
        finally:
            os._exit(0)
    for fd in fds:
        os.close(fd)  # the child holds the events now: these closes are only reference drops
    return pid


def _raise_bcc_probe_limit(needed: int) -> None:
    """BCC caps a process at 1000 probes: BCC_PROBE_LIMIT raises it since 0.19 (read at each check);
    older releases (Debian 11's 0.18) keep the cap in a module global instead."""
    os.environ["BCC_PROBE_LIMIT"] = str(max(needed, int(os.environ.get("BCC_PROBE_LIMIT", "0") or 0)))
    import bcc

    if isinstance(getattr(bcc, "_probe_limit", None), int):
        bcc._probe_limit = max(bcc._probe_limit, needed)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )
