"""The BPF program: which probes it serves, its ``-D`` macros, and compiling it with BCC.

``bpf/socketrace.c`` is never edited as text. Everything specific to this run
(filters, struct field locations, entry points) reaches it as ``-D`` macros
built here from validated integers only, so user strings never reach the
compiler. ``socketrace --ebpf`` prints the list and the source.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .discovery import Discovery, FieldLocation, Probe, ProbeKind
from .features import Features
from .options import AttachWay, Filters, Options

if TYPE_CHECKING:
    from bcc import BPF

__all__ = [
    "ProgramError",
    "ProgramPlan",
    "bpf_sources",
    "compile_program",
    "kernel_version_code",
    "kprobe_entry_name",
    "kprobe_multi_cookie",
    "macro_definitions",
    "plan_program",
    "program_listing",
]

SOURCE_NAME = "socketrace.c"
RINGBUF_PAGES = 1024  # 4 MiB with 4 KiB pages: ~26k events of 160 bytes


class ProgramError(Exception):
    """The program could not be compiled or loaded."""


@dataclass(frozen=True)
class ProgramPlan:
    """One program for one backend: the probes it serves (probe id = index) and its macros."""

    way: AttachWay
    probes: tuple[Probe, ...]
    macros: dict[str, str]

    @property
    def cflags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in sorted(self.macros.items())]


def plan_program(options: Options, discovery: Discovery, way: AttachWay, features: Features) -> ProgramPlan:
    """Choose the probes the backend serves and build the program's macros."""
    probes = tuple(discovery.tracepoints if way is AttachWay.TRACEPOINT else discovery.functions)
    macros = macro_definitions(options, discovery.fields, features)
    macros.update(_entry_macros(way, probes))
    if way in (AttachWay.KPROBE, AttachWay.KPROBE_MULTI):
        macros.update({name: str(offset) for name, offset in discovery.registers.items()})
        if features.get_func_ip:
            macros["HAVE_GET_FUNC_IP"] = "1"
        if options.filters.track_sock and discovery.sock_free_ip:
            macros["TRACK_FREE_IP"] = f"{discovery.sock_free_ip}ULL"
    return ProgramPlan(way, probes, macros)


def macro_definitions(options: Options, fields: dict[str, FieldLocation], features: Features) -> dict[str, str]:
    """Filters, outputs, field locations and platform facts as macro name -> integer text."""
    macros: dict[str, str] = {name: f"{loc.offset},{loc.size},{loc.shift},{loc.bits}" for name, loc in fields.items()}
    macros.update(_filter_macros(options.filters))
    output = options.output
    for enabled, name in (
        (output.reads_sock_info, "OUTPUT_SOCK_INFO"),
        (output.reads_socket_info, "OUTPUT_SOCKET_INFO"),
        (output.stack, "OUTPUT_STACK"),
        (options.filters.track_sock, "TRACK_SOCK"),
        (output.return_values, "OUTPUT_RETURN"),
        (options.filters.errors_only, "FILTER_ERRORS"),
        (not features.ring_buffer, "USE_PERF_BUFFER"),
    ):
        if enabled:
            macros[name] = "1"
    macros["RINGBUF_PAGES"] = str(RINGBUF_PAGES)
    macros["SOCKETRACE_PAGE_SIZE"] = str(os.sysconf("SC_PAGE_SIZE"))
    macros["SOCKETRACE_KERNEL_VERSION_CODE"] = str(kernel_version_code(platform.release()))
    return macros


def _filter_macros(filters: Filters) -> dict[str, str]:
    macros: dict[str, str] = {}
    for name, value in (
        ("FILTER_PID", filters.pid),
        ("FILTER_NETNS", filters.netns),
        ("FILTER_MARK", filters.mark),
        ("FILTER_PROTOCOL", filters.protocol),
        ("FILTER_PORT", filters.port),
    ):
        if value is not None:
            macros[name] = str(int(value))
    if filters.needs_inet:
        macros["FILTER_INET"] = "1"
    if filters.addr is not None:
        addr = filters.addr
        if addr.version == 4:
            macros["FILTER_ADDR4"] = str(int.from_bytes(addr.packed, sys.byteorder))
            packed6 = b"\0" * 10 + b"\xff\xff" + addr.packed
        else:
            packed6 = addr.packed
        for word in range(4):
            value = int.from_bytes(packed6[word * 4 : word * 4 + 4], sys.byteorder)
            macros[f"FILTER_ADDR6_{word}"] = f"{value}U"
    return macros


def _entry_macros(way: AttachWay, probes: tuple[Probe, ...]) -> dict[str, str]:
    """The entry points the backend attaches, as X-macro lists of integers."""
    if way is AttachWay.TRACEPOINT:
        assert all(probe.kind is ProbeKind.TRACEPOINT for probe in probes)
        entries = "".join(
            f"RAWTP({probe_id},{probe.arg_index},{int(probe.arg_kind)})" for probe_id, probe in enumerate(probes)
        )
        return {"RAW_TRACEPOINTS": entries}
    if way is AttachWay.KPROBE:
        positions = sorted({(probe.arg_index, int(probe.arg_kind)) for probe in probes})
        return {"KPROBES": "".join(f"KPROBE({index},{kind})" for index, kind in positions)}
    return {"KPROBE_MULTI": "1"}


def kprobe_entry_name(probe: Probe) -> str:
    """The classic kprobe entry function serving this probe's argument position."""
    return f"kprobe_arg{probe.arg_index}_kind{int(probe.arg_kind)}"


def kprobe_multi_cookie(probe_id: int, probe: Probe) -> int:
    """What the kprobe-multi programs learn from bpf_get_attach_cookie(); see COOKIE_* in the C."""
    return probe_id << 12 | int(probe.returns_int32) << 8 | int(probe.arg_kind) << 4 | probe.arg_index


def kernel_version_code(release: str) -> int:
    """LINUX_VERSION_CODE of a release string such as ``6.18.44-fc``."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        return 0
    major, minor, patch = (int(part or 0) for part in match.groups())
    return (major << 16) + (minor << 8) + min(patch, 255)


def bpf_sources() -> Traversable:
    """The ``bpf/`` directory, inside the package (a symlink) or a zipapp."""
    return resources.files("socketrace") / "bpf"


@contextmanager
def _source_tree() -> Iterator[Path]:
    """``bpf/`` as a real directory, extracting it when running from a zip."""
    sources = bpf_sources()
    if isinstance(sources, Path):
        yield sources
        return
    with tempfile.TemporaryDirectory(prefix="socketrace-bpf-") as tmp:
        _extract(sources, Path(tmp))
        yield Path(tmp)


def _extract(source: Traversable, target: Path) -> None:
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).mkdir()
            _extract(entry, target / entry.name)
        else:
            (target / entry.name).write_bytes(entry.read_bytes())


def compile_program(plan: ProgramPlan) -> BPF:
    """Compile and load with BCC, using bpf/include as the kernel tree.

    The stand-in headers are used even where real headers exist: the
    program needs no kernel definitions, and headers of another kernel
    would only slow the compile down.
    """
    # BCC reads its per-process probe cap when imported; classic kprobes need one per function.
    os.environ.setdefault("BCC_PROBE_LIMIT", "100000")
    try:
        from bcc import BPF  # imported only by the stages that need the kernel
    except ImportError:
        raise ProgramError("BCC's Python module is missing: install python3-bpfcc") from None

    with _source_tree() as tree:
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)
        try:
            return BPF(src_file=str(tree / SOURCE_NAME).encode(), cflags=[*plan.cflags, f"-I{tree}"])
        except Exception as err:  # BCC raises bare Exception on compile errors
            raise ProgramError(f"BPF program failed to compile: {err}") from err


def program_listing(plan: ProgramPlan) -> str:
    """The source and its macros, as ``--ebpf`` prints them."""
    source = (bpf_sources() / SOURCE_NAME).read_text()
    defines = "\n".join(f"#define {name} {value}" for name, value in sorted(plan.macros.items()))
    return f"/* -D macros for this run */\n{defines}\n\n{source}"
