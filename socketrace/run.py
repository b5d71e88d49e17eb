"""One run of socketrace, stage by stage: the only module that knows the order.

options -> features -> discovery -> program -> attach -> events -> output.
Each stage's failure names the stage; everything attached is detached on
every way out (an error, Ctrl+C, SIGTERM, a closed pipe, the line limit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import TextIO

from .attach import AttachError, choose_way, make_attacher
from .discovery import ArgKind, Discovery, Probe, discover
from .events import EventReader
from .features import detect_features
from .options import AttachWay, Options, OutputSpec, Timestamp
from .output.clock import EventClock
from .output.json import JsonFormatter
from .output.summary import Summary
from .output.text import TextFormatter
from .output.writers import LineWriter, SummaryWriter
from .program import ProgramPlan, compile_program, plan_program, program_listing
from .symbols import KernelSymbols, ProbeNames

__all__ = ["RunError", "StopRequested", "list_functions", "run", "stop_on_signals"]

log = logging.getLogger("socketrace")

POLL_TIMEOUT_MS = 100


class RunError(Exception):
    """A failure at run time: reported in one line, exit status 1."""


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: end the run, detaching everything."""


def run(options: Options, stdout: TextIO) -> int:
    """Trace until stopped; returns the exit status."""
    if options.list_funcs:
        stdout.write(list_functions(discover(options, with_functions=True), options.list_funcs))
        return 0
    if os.geteuid() != 0:
        raise RunError("tracing needs root (CAP_BPF and CAP_PERFMON)")
    features = detect_features()
    way = choose_way(options.attach_way, features)
    if options.output.return_values and way is not AttachWay.KPROBE_MULTI:
        raise RunError(
            f"--output-return and --filter-errors need kprobe-multi (5.18+); the backend here is {way.value}"
        )
    discovery = discover(options, with_functions=way is not AttachWay.TRACEPOINT)
    if discovery.functions:
        log.info("%d functions take a socket (checked against %s)", len(discovery.functions), discovery.function_source)
    for reason, count in sorted(discovery.skipped.items()):
        log.info("Left out %d functions: %s", count, reason)
    plan = plan_program(options, discovery, way, features)
    if options.dump_program:
        stdout.write(program_listing(plan))
        return 0
    if not plan.probes:
        raise RunError("no probe matches: check --filter-funcs")
    if options.output.ready_file is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(options.output.ready_file)  # a stale one would release a waiting script too early
    bpf = compile_program(plan)
    printed = 0
    with _output(options.output.file, stdout) as sink:
        reader = EventReader(bpf, use_perf_buffer=not features.ring_buffer)
        # Classic kprobes name functions by address, --output-stack names frames: one read of kallsyms.
        needs_symbols = options.output.stack or plan.way is AttachWay.KPROBE
        symbols = KernelSymbols.from_kallsyms() if needs_symbols else None
        writer = _writer(options.output, _probe_names(plan, symbols).name_of, sink, symbols)
        try:
            with make_attacher(bpf, way, with_returns=options.output.return_values) as attacher:
                if attacher.attach(plan.probes).attached == 0:
                    raise AttachError("no probe could be attached")
                _announce_ready(options.output.ready_file)
                printed = _consume(reader, writer, sink, options.output.limit_lines)
        except StopRequested:
            log.info("Stopped while attaching")
        losses = reader.losses()
    log.info(
        "%d events %s, %d dropped (buffer full)",
        printed,
        "counted" if options.output.summary else "printed",
        losses.dropped,
    )
    if losses.stack_errors:
        log.info("%d stacks could not be read", losses.stack_errors)
    if losses.calls_lost:
        log.info("%d calls not followed to their return (too many in flight)", losses.calls_lost)
    return 0


def _probe_names(plan: ProgramPlan, symbols: KernelSymbols | None) -> ProbeNames:
    names = [probe.name for probe in plan.probes]
    if plan.way is not AttachWay.KPROBE or symbols is None:
        return ProbeNames(names)
    return ProbeNames(names, symbols.address_of(set(names)))


def _seconds_since_process_start() -> float:
    """From exec to now, as the kernel counts it (interpreter start-up included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) - start_ticks / ticks


def _writer(
    spec: OutputSpec, name_of: Callable[[int, int], str], sink: TextIO, kernel_symbols: KernelSymbols | None
) -> LineWriter | SummaryWriter:
    """The table, JSON lines, or the summary, as the options ask."""
    if spec.summary:
        return SummaryWriter(Summary(name_of, spec.summary_top), sink, spec.summary_interval)
    symbols = kernel_symbols if spec.stack else None
    if spec.json:
        return LineWriter(JsonFormatter(name_of, EventClock(spec.timestamp), symbols).format, sink, header=None)
    clock = EventClock(spec.timestamp) if spec.timestamp is not Timestamp.NONE else None
    table = TextFormatter(spec, name_of, symbols, clock)
    return LineWriter(table.format, sink, table.header())


def _announce_ready(ready_file: str | None) -> None:
    """Tell people and scripts that events now flow."""
    if ready_file is not None:
        try:
            with open(ready_file, "w"):
                pass
        except OSError as err:
            raise RunError(f"--ready-file: cannot create {ready_file}: {err.strerror}") from None
    log.info("Ready %.2f s after start", _seconds_since_process_start())
    log.info("Press Ctrl+C to stop")


def _consume(reader: EventReader, writer: LineWriter | SummaryWriter, sink: TextIO, limit: int) -> int:
    """The event loop, until a signal, the line limit or a closed pipe; returns the events taken."""
    taken = 0
    try:
        writer.start()
        try:
            while not limit or taken < limit:
                records = reader.poll(POLL_TIMEOUT_MS)
                if limit:
                    records = records[: limit - taken]
                writer.write(records)
                writer.tick()
                taken += len(records)
        except StopRequested:
            pass
        writer.finish()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sink.fileno())
    return taken


@contextlib.contextmanager
def _output(path: str | None, stdout: TextIO) -> Iterator[TextIO]:
    if path is None:
        yield stdout
        return
    try:
        sink = open(path, "w")  # noqa: SIM115 -- closed by the with below
    except OSError as err:
        raise RunError(f"--output-file: cannot open {path}: {err.strerror}") from None
    with sink:
        yield sink


def stop_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise StopRequested, even where SIGINT was
    ignored at start (a background job of a non-interactive shell), as `kill -INT`
    users expect. The CLI calls this first thing, so no signal finds Python's default."""

    def stop(_signum: int, _frame: object) -> None:
        raise StopRequested

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def list_functions(discovery: Discovery, what: str) -> str:
    """``--list-funcs``: probes grouped by the socket argument's position, then a total."""
    if what == "tracepoint":
        probes: list[Probe] = discovery.tracepoints
        noun = "Raw tracepoints with the socket in ctx->args"
    else:
        kind = ArgKind.SOCK if what == "sock" else ArgKind.SOCKET
        probes = [probe for probe in discovery.functions if probe.arg_kind is kind]
        noun = f"Functions with struct {what} * as argument"
    lines = []
    for position in sorted({probe.arg_index for probe in probes}):
        lines.append(f"{noun}[{position}]:" if what == "tracepoint" else f"{noun} {position + 1}:")
        lines.extend(f"  {probe.name}" for probe in probes if probe.arg_index == position)
    lines.append(f"Total: {len(probes)}")
    return "\n".join(lines) + "\n"
