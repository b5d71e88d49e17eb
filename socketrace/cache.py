"""A small on-disk cache of JSON values, for answers that only change with the kernel.

Scanning a kernel's BTF for the functions that take a socket is the slowest
part of starting up (seconds under emulation), and its answer only changes
when the kernel does. Entries are keyed by what identifies the input (a build
id, a content hash) plus socketrace's own version, written atomically, and
never trusted blindly: anything unreadable, or that the caller's ``parse``
rejects, is a miss (values from the cache become compiler flags). A cache that
cannot be written (read-only or full disk) costs speed, never a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import __version__

__all__ = ["cache_dir", "cached", "lookup", "store"]

log = logging.getLogger("socketrace")

T = TypeVar("T")

# Bumped whenever what is cached changes meaning; part of every key.
SCHEMA = "2"


def cache_dir() -> Path | None:
    """``$SOCKETRACE_CACHE_DIR`` ("off" disables), else /var/cache/socketrace for root
    (sudo may keep a user's HOME: root's files do not belong there), else the XDG cache."""
    configured = os.environ.get("SOCKETRACE_CACHE_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/socketrace")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "socketrace"


def _path(directory: Path, kind: str, key: str) -> Path:
    digest = hashlib.sha256(f"{SCHEMA}\0{__version__}\0{key}".encode()).hexdigest()[:32]
    return directory / f"{kind}-{digest}.json"


def lookup(kind: str, key: str, parse: Callable[[Any], T]) -> T | None:
    """``parse`` of the value cached under ``kind``/``key``; None when absent or ``parse`` rejects it
    (by raising TypeError, ValueError or KeyError)."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        return parse(json.loads(_path(directory, kind, key).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(kind: str, key: str, value: Any, keep: int = 0) -> None:
    """Cache a JSON-serialisable value; with ``keep``, only that many of the kind's newest entries stay."""
    directory = cache_dir()
    if directory is None:
        return
    _store(directory, kind, _path(directory, kind, key), value)
    if keep:
        entries = sorted(directory.glob(f"{kind}-*.json"), key=_mtime, reverse=True)
        for stale in entries[keep:]:
            with contextlib.suppress(OSError):
                stale.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def cached(kind: str, key: str, build: Callable[[], Any], parse: Callable[[Any], T]) -> T:
    """``parse`` of ``build()``'s JSON-serialisable value, taken from the cache when ``kind``/``key``
    is there and ``parse`` accepts it (it raises TypeError, ValueError or KeyError otherwise)."""
    hit = lookup(kind, key, parse)
    if hit is not None:
        return hit
    value = build()
    store(kind, key, value)
    return parse(value)


def _store(directory: Path, kind: str, path: Path, value: Any) -> None:
    """Write atomically (a reader never sees half a file); give up quietly when the disk says no.
    Interrupted (a signal during start-up), it leaves no temporary file behind."""
    tmp_path = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{kind}-", suffix=".json")
        with os.fdopen(fd, "w") as tmp:
            json.dump(value, tmp, separators=(",", ":"))
        os.replace(tmp_path, path)
        tmp_path = None
        log.debug("cached %s in %s", kind, path)
    except OSError as err:
        log.debug("cannot cache %s in %s: %s", kind, directory, err)
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
