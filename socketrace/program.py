"""The BPF program: which probes it serves, its ``-D`` macros, and compiling and loading it with BCC.

``bpf/socketrace.c`` is never edited as text. Everything specific to this run
(filters, struct field locations, entry points) reaches it as ``-D`` macros
built here from validated integers, and every constant shared with the Python
side from :mod:`socketrace.contract`, so user strings never reach the compiler
and the two sides cannot drift. ``socketrace --ebpf`` prints the list and the source.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import bpfsys, compiled, contract
from .contract import kprobe_entry_name, rawtp_entry_name
from .discovery import SOCK_FREE_FUNCTION, Discovery, FieldLocation, Probe, sock_common_fields
from .features import Features
from .filter_expr import CompiledFilter, Sets, compile_filter
from .options import AttachWay, Filters, Options

if TYPE_CHECKING:
    from bcc import BPF

__all__ = [
    "Entry",
    "ProgramError",
    "ProgramPlan",
    "captured_stderr",
    "compile_program",
    "kernel_version_code",
    "load_function",
    "macro_definitions",
    "plan_program",
    "program_listing",
]

log = logging.getLogger("socketrace")

SOURCE_NAME = "socketrace.c"
RING_BUFFER_BYTES = 4 << 20  # the event buffer: about 13,000 events of 320 bytes
SPAN_MAX = 1024  # largest struct copy the program makes in one read (SPAN_MAX in the C)
SOCKET_SPAN_FIELDS = ("SOCKET_STATE", "SOCKET_TYPE", "SOCKET_FLAGS", "SOCKET_INODE_INO")
# What the filters read in one copy before deciding (the rest is read only once these pass).
SK_HEAD_FIELDS = ("SK_FAMILY", "SK_STATE", "SK_NUM", "SK_DPORT", "SK_RCV_SADDR", "SK_DADDR")
# --filter's accessors whose field joins the head copy when the expression reads it.
EXPR_HEAD_FIELDS = {"F_SADDR6": "SK_V6_RCV_SADDR", "F_DADDR6": "SK_V6_DADDR"}


class ProgramError(Exception):
    """The program could not be compiled or loaded; the message is one line."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log  # what the compiler or verifier printed, for --debug


@dataclass(frozen=True)
class Entry:
    """A function of the program to load: its name, BPF program type and expected attach type."""

    name: str
    prog_type: int
    attach_type: int = -1


@dataclass(frozen=True)
class ProgramPlan:
    """One program for one backend: the probes it serves (probe id = index), its entries and macros."""

    way: AttachWay
    probes: tuple[Probe, ...]
    macros: dict[str, str]
    entries: tuple[Entry, ...] = field(default=())
    shared_handler: Entry | None = None  # the tail-call target of the entries, if they use one
    sets: Sets = field(default_factory=Sets.empty)  # --filter's lookup sets, filled into their maps once loaded

    @property
    def cflags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in sorted(self.macros.items())]


def plan_program(
    options: Options,
    discovery: Discovery,
    way: AttachWay,
    features: Features,
    sock_free_ip: int | None = None,
    empty_entries: bool = False,
) -> ProgramPlan:
    """Choose the probes the backend serves, the entries to load, and the program's macros.

    ``sock_free_ip`` is SOCK_FREE_FUNCTION's address, which classic kprobes need for
    --filter-track-sock; ``empty_entries`` makes every entry return at once: the benchmarks' floor.
    """
    probes = tuple(discovery.tracepoints if way is AttachWay.TRACEPOINT else discovery.functions)
    expr = _compiled_expr(options.filters)
    macros = macro_definitions(options, discovery.fields, features, expr)
    entries, handler, entry_macros = _entries(way, probes, options.output.return_values)
    macros.update(entry_macros)
    if way in (AttachWay.KPROBE, AttachWay.KPROBE_MULTI):
        macros.update({name: str(offset) for name, offset in discovery.registers.items()})
        if features.get_func_ip:
            macros["HAVE_GET_FUNC_IP"] = "1"
    if options.filters.track_sock:
        free_ids = [probe_id for probe_id, probe in enumerate(probes) if probe.name == SOCK_FREE_FUNCTION]
        if way is AttachWay.KPROBE_MULTI and free_ids:
            macros["TRACK_FREE_PROBE_ID"] = str(free_ids[0])
        elif way is AttachWay.KPROBE and free_ids and sock_free_ip:
            macros["TRACK_FREE_IP"] = f"{int(sock_free_ip)}ULL"
    if options.output.summary:
        # One row per probe; classic kprobes key rows by function address, one per attached function too.
        macros["SUMMARY_PROBES"] = str(max(1, len(probes)))
    if empty_entries:
        macros["EMPTY_ENTRIES"] = "1"
    return ProgramPlan(way, probes, macros, entries, handler, expr.sets if expr else Sets.empty())


def _compiled_expr(filters: Filters) -> CompiledFilter | None:
    """--filter's tree (with the flags it absorbed) compiled for the target, once per plan."""
    return compile_filter(filters.expr, sys.byteorder) if filters.expr is not None else None


def macro_definitions(
    options: Options,
    fields: dict[str, FieldLocation],
    features: Features,
    expr: CompiledFilter | None = None,
) -> dict[str, str]:
    """Contract constants, filters, outputs, field locations and platform facts as macro name -> text;
    ``expr`` is --filter compiled (plan_program compiles it once), compiled here when not given."""
    expr = expr if expr is not None else _compiled_expr(options.filters)
    macros = contract.contract_macros()
    macros["SPAN_MAX"] = str(SPAN_MAX)
    macros.update({name: f"{loc.offset},{loc.size},{loc.shift},{loc.bits}" for name, loc in fields.items()})
    macros.update(_span_macros(fields, _head_fields(expr)))
    macros.update(_filter_macros(options.filters, expr))
    output = options.output
    for enabled, name in (
        (output.reads_sock_info, "OUTPUT_SOCK_INFO"),
        (output.reads_socket_info, "OUTPUT_SOCKET_INFO"),
        (output.stack, "OUTPUT_STACK"),
        (output.summary, "OUTPUT_SUMMARY"),
        (options.filters.track_sock, "TRACK_SOCK"),
        (output.return_values, "OUTPUT_RETURN"),
        (options.filters.errors_only, "FILTER_ERRORS"),
        (not features.ring_buffer or options.perf_buffer, "USE_PERF_BUFFER"),
    ):
        if enabled:
            macros[name] = "1"
    page_size = os.sysconf("SC_PAGE_SIZE")
    macros["RINGBUF_PAGES"] = str(max(1, RING_BUFFER_BYTES // page_size))
    macros["SOCKETRACE_PAGE_SIZE"] = str(page_size)
    macros["SOCKETRACE_KERNEL_VERSION_CODE"] = str(kernel_version_code(platform.release()))
    return macros


def _head_fields(expr: CompiledFilter | None) -> tuple[str, ...]:
    """SK_HEAD_FIELDS, and the IPv6 addresses when --filter tests them: one copy of the head holds
    everything the expression reads but mark, protocol and netns (sock_common: valid in every sock)."""
    used = expr.reads if expr is not None else frozenset()
    extra = tuple(field for accessor, field in EXPR_HEAD_FIELDS.items() if accessor in used)
    return SK_HEAD_FIELDS + extra


def _span_macros(fields: dict[str, FieldLocation], head_fields: tuple[str, ...] = SK_HEAD_FIELDS) -> dict[str, str]:
    """How many bytes of a sock (and of its struct socket) one read copies: enough
    for every field an event shows, within SPAN_MAX. Fields beyond are read alone."""

    def span(names: list[str]) -> int:
        end = max((fields[name].end for name in names if name in fields), default=8)
        return min((end + 7) // 8 * 8, SPAN_MAX)

    common = span(sorted(sock_common_fields()))
    return {
        "SK_HEAD_SPAN": str(span(list(head_fields))),
        "SK_COMMON_SPAN": str(common),
        "SK_SPAN": str(max(common, span([name for name in fields if name.startswith("SK_")]))),
        "SOCKET_SPAN": str(span(list(SOCKET_SPAN_FIELDS))),
    }


def _filter_macros(filters: Filters, expr: CompiledFilter | None) -> dict[str, str]:
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
    if expr is not None:
        # Only validated integers, accessor names and operators (filter_expr.compile_filter): never user text.
        macros["FILTER_EXPR"] = expr.text
        used = expr.reads
        macros.update({f"HAVE_{name}": "1" for name in sorted(used)})
        sets = expr.sets
        for prefix, listed in (("PORT", sets.ports), ("PREFIX4", sets.prefixes4), ("PREFIX6", sets.prefixes6)):
            macros.update({f"{prefix}_SET_{index}_SIZE": str(len(members)) for index, members in enumerate(listed)})
        if used - {"F_PID", "F_NETNS"}:
            macros["FILTERS_READ_HEAD"] = "1"
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


def _entries(
    way: AttachWay, probes: tuple[Probe, ...], with_returns: bool
) -> tuple[tuple[Entry, ...], Entry | None, dict[str, str]]:
    """The entry points the backend loads, the shared handler, and the X-macro lists that define them."""
    if way is AttachWay.TRACEPOINT:
        prog_type = bpfsys.BPF_PROG_TYPE_RAW_TRACEPOINT
        entries = tuple(Entry(rawtp_entry_name(probe_id), prog_type) for probe_id in range(len(probes)))
        macro = "".join(
            f"RAWTP({rawtp_entry_name(probe_id)},{probe_id},{probe.arg_index},{int(probe.arg_kind)})"
            for probe_id, probe in enumerate(probes)
        )
        return entries, Entry(contract.SHARED_HANDLER, prog_type), {"RAW_TRACEPOINTS": macro}
    if way is AttachWay.KPROBE:
        prog_type = bpfsys.BPF_PROG_TYPE_KPROBE
        positions = sorted({(probe.arg_index, probe.arg_kind) for probe in probes})
        entries = tuple(Entry(kprobe_entry_name(index, kind), prog_type) for index, kind in positions)
        macro = "".join(f"KPROBE({kprobe_entry_name(index, kind)},{index},{int(kind)})" for index, kind in positions)
        return entries, Entry(contract.SHARED_HANDLER, prog_type), {"KPROBES": macro}
    multi = bpfsys.BPF_TRACE_KPROBE_MULTI
    entries = (Entry(contract.ENTRY_KPROBE_MULTI, bpfsys.BPF_PROG_TYPE_KPROBE, multi),)
    if with_returns:
        entries += (Entry(contract.RETURN_KPROBE_MULTI, bpfsys.BPF_PROG_TYPE_KPROBE, multi),)
    return entries, None, {"KPROBE_MULTI": "1"}


def kernel_version_code(release: str) -> int:
    """LINUX_VERSION_CODE of a release string such as ``6.18.44-fc``."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        return 0
    major, minor, patch = (int(part or 0) for part in match.groups())
    return (major << 16) + (minor << 8) + min(patch, 255)


def bpf_source_dir() -> Path:
    """``bpf/`` as shipped: inside the package (wheel, editable install via a symlink, zipapp)."""
    return Path(__file__).resolve().parent / "bpf"


@contextlib.contextmanager
def _source_tree() -> Iterator[Path]:
    """``bpf/`` as a real directory, extracted to a temporary one when running from a zipapp."""
    here = bpf_source_dir()
    if here.is_dir():
        yield here
        return
    import zipfile

    archive = Path(__file__).resolve().parents[1]  # .../socketrace.pyz/socketrace/program.py
    with tempfile.TemporaryDirectory(prefix="socketrace-bpf-") as tmp, zipfile.ZipFile(archive) as zipped:
        for name in zipped.namelist():
            if name.startswith("socketrace/bpf/") and not name.endswith("/"):
                zipped.extract(name, tmp)
        yield Path(tmp) / "socketrace" / "bpf"


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """What C code (clang, libbpf, the verifier log) writes to fd 2 meanwhile, instead of the terminal.

    The list it yields holds the text once the block ends, whether it ended well or not.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text.append(capture.read().decode(errors="replace"))


def _first_error(log: str) -> str:
    """The line of a compiler or verifier log that says what went wrong."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    reasons = [line for line in lines if not line.startswith(("processed ", "verification time", "stack depth", ";"))]
    return reasons[-1] if reasons else "no reason given"


def compile_program(plan: ProgramPlan) -> BPF:
    """Compile with BCC against bpf/include (the stand-in kernel tree), then load every entry.

    The stand-in headers are used even where real headers exist: the program
    needs no kernel definitions, and headers of another kernel would only slow
    the compile down. Loading here, not at attach time, puts every verifier
    rejection in one place, with its reason. A program compiled before with the
    same source, macros, BCC and kernel comes from the compile cache
    (:mod:`socketrace.compiled`); what is compiled is cached for the next run.
    """
    try:
        from bcc import BPF  # noqa: F401  imported only by the stages that need the kernel
    except ImportError:
        raise ProgramError(
            "BCC's Python module is not importable: install python3-bpfcc (and see README, Installing)"
        ) from None

    loads = (*plan.entries, *([plan.shared_handler] if plan.shared_handler else []))
    started = time.monotonic()
    with _source_tree() as tree:
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)
        key = compiled.cache_key(tree, plan.cflags)
        functions = compiled.lookup(key)
        if functions is not None:
            bpf = _compile(tree, [*plan.cflags, f"-D{compiled.MAPS_ONLY}=1"])
            try:
                compiled.load_cached(bpf, loads, functions)
            except (KeyError, OSError) as err:  # another program under the key, or the kernel refused it
                log.debug("the compile cache does not fit (%s): compiling", err)
                bpf.cleanup()
            else:
                log.debug(
                    "maps compiled and %d functions loaded from the compile cache in %.2f s",
                    len(loads),
                    time.monotonic() - started,
                )
                return _filled(bpf, plan)
        bpf = _compile(tree, plan.cflags)
    log.debug("compiled in %.2f s", time.monotonic() - started)
    started = time.monotonic()
    for entry in loads:
        load_function(bpf, entry)
    log.debug("loaded %d functions in %.2f s", len(loads), time.monotonic() - started)
    functions = compiled.capture(bpf, [entry.name for entry in loads])
    if functions is not None:
        compiled.store(key, functions)
    return _filled(bpf, plan)


def _filled(bpf: BPF, plan: ProgramPlan) -> BPF:
    """The program with its lookup sets filled: what the instructions look up, not part of them."""
    for index, ports in enumerate(plan.sets.ports):
        table = bpf[contract.MapName.port_set(index).encode()]
        for port in sorted(ports):
            table[table.Key(port)] = table.Leaf(1)
    for version, listed in ((4, plan.sets.prefixes4), (6, plan.sets.prefixes6)):
        for index, prefixes in enumerate(listed):
            table = bpf[contract.MapName.prefix_set(version, index).encode()]
            for network, length in sorted(prefixes):
                packed = network.to_bytes(4 if version == 4 else 16, "big")
                words = [int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4)]
                key = table.Key(length, words[0] if version == 4 else (ctypes.c_uint32 * 4)(*words))
                table[key] = table.Leaf(1)
    return bpf


def _compile(tree: Path, cflags: list[str]) -> BPF:
    """BCC's compile of the source tree with these flags; a failure is a ProgramError with clang's reason."""
    from bcc import BPF

    with captured_stderr() as printed:
        try:
            return BPF(src_file=str(tree / SOURCE_NAME).encode(), cflags=[*cflags, f"-I{tree}"])
        except Exception:  # BCC raises bare Exception; the reason is in what clang printed
            pass
    raise ProgramError(f"the BPF program failed to compile: {_first_error(printed[0])}", printed[0])


def load_function(bpf: BPF, entry: Entry) -> int:
    """Load one function of the program (BCC caches it by name); its fd. A rejection is a ProgramError."""
    with captured_stderr() as printed:
        try:
            if entry.attach_type >= 0:
                function = bpf.load_func(entry.name.encode(), entry.prog_type, attach_type=entry.attach_type)
            else:
                function = bpf.load_func(entry.name.encode(), entry.prog_type)
        except Exception as err:  # BCC raises bare Exception: "Failed to load BPF program b'x': reason"
            failure = str(err)
        else:
            return int(function.fd)
    reason = _first_error(printed[0]) if printed[0].strip() else failure
    raise ProgramError(f"the kernel refused to load {entry.name}: {reason}", printed[0])


def program_listing(plan: ProgramPlan) -> str:
    """The source and its macros, as ``--ebpf`` prints them."""
    with _source_tree() as tree:
        source = (tree / SOURCE_NAME).read_text()
    defines = "\n".join(f"#define {name} {value}" for name, value in sorted(plan.macros.items()))
    return f"/* -D macros for this run */\n{defines}\n\n{source}"
