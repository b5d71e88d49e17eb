"""Errors at run time, as one line: what failed, why, and a hint where one helps."""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Iterator

__all__ = ["RUNTIME_ERRORS", "RunError", "describe", "stage"]

log = logging.getLogger("socketrace")

# Every failure at run time becomes one line; only signals (BaseException) pass through.
RUNTIME_ERRORS = (Exception,)

HINTS = {
    errno.EPERM: "run as root (tracing needs CAP_BPF and CAP_PERFMON)",
    errno.EACCES: "run as root (tracing needs CAP_BPF and CAP_PERFMON)",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.ENFILE: "the system is out of file descriptors",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.ENOMEM: "not enough memory for BPF maps (the memlock limit, or the cgroup's)",
    errno.EROFS: "the file system is read-only",
}


class RunError(Exception):
    """A failure at run time, already worded: reported in one line, exit status 1."""


def describe(err: BaseException) -> str:
    """The one line for an error: socketrace's own as worded, OSError with its file and a hint."""
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}"
        hint = HINTS.get(err.errno or 0)
        return f"{text} ({hint})" if hint else text
    if type(err).__module__.startswith("socketrace."):
        return str(err)
    return f"{type(err).__name__}: {err} (unexpected: run with --debug and report it)"


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Name the step in any failure that is not already socketrace's own words; --debug logs its duration."""
    started = time.monotonic()
    try:
        yield
        log.debug("%s: %.2f s", what, time.monotonic() - started)
    except RunError:
        raise
    except Exception as err:
        if type(err).__module__.startswith("socketrace.") and not isinstance(err, OSError):
            raise
        raise RunError(f"{what}: {describe(err)}") from err
