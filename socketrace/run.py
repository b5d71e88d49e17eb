"""One run of socketrace, stage by stage: the only module that knows the order.

options -> features -> discovery -> program -> attach -> events -> output.
Each stage's failure names the stage; everything attached is detached on
every way out (an error, a signal, a closed pipe, the line limit).

Once everything is attached the program's control flag lets events flow,
and from then on signals only ask the loop to stop. Stopping clears the flag,
takes every record still in the buffer, then reads the counters, so the
exit report accounts for every probe run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from . import signals
from .attach import Attacher, choose_way, make_attacher
from .contract import RETURN_KPROBE_MULTI, ArgKind, Counter
from .discovery import SOCK_FREE_FUNCTION, Discovery, Probe, discover
from .errors import RunError, stage
from .events import EventReader, read_counters, read_summary, set_tracing
from .features import Features, bcc_loads_kprobe_multi, detect_features
from .options import AttachWay, OptionError, Options, OutputSpec, Timestamp
from .output.clock import EventClock
from .output.json import JsonFormatter
from .output.report import Delivery, KernelRuns, accounting_lines
from .output.summary import SummaryRenderer
from .output.text import TextFormatter
from .output.writers import LineWriter, SummaryWriter
from .program import ProgramPlan, compile_program, plan_program, program_listing
from .symbols import KernelSymbols, ProbeTable

if TYPE_CHECKING:
    from bcc import BPF

__all__ = ["list_functions", "run"]

log = logging.getLogger("socketrace")

POLL_TIMEOUT_MS = 100
# After a stop, the buffer is printed for at most this long; the rest is counted as left in it.
# A full ring buffer is ~14,000 events: 0.05 s of formatting natively, a second or more under emulation.
DRAIN_SECONDS = 0.3


def run(options: Options, stdout: TextIO) -> int:
    """Trace until stopped; returns the exit status."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("interpreter and imports: %.2f s after exec", _seconds_since_process_start())
    if options.list_funcs:
        with stage("reading kernel types"):
            discovery = discover(options, with_functions=True)
        return _print_listing(list_functions(discovery, options.list_funcs), stdout)
    if os.geteuid() != 0 and not options.dump_program:
        raise RunError("tracing needs root (CAP_BPF and CAP_PERFMON)")
    _import_in_background("bcc", "tqdm")  # about 1.5 s under emulation; the kernel is probed meanwhile
    with stage("probing the kernel's BPF features"):
        features = detect_features(with_bcc=False) if os.geteuid() == 0 else Features(ring_buffer=True, kprobes=False)
    requested = options.attach_way  # TRACEPOINT with --skb-tracepoints (options.validate)
    kprobes = features.kprobes and requested is not AttachWay.TRACEPOINT
    with stage("reading kernel types"):
        discovery = discover(options, with_functions=kprobes, with_registers=kprobes)
    features = dataclasses.replace(features, bcc_kprobe_multi=bcc_loads_kprobe_multi())
    way = choose_way(requested, features)
    if options.output.return_values and way is not AttachWay.KPROBE_MULTI:
        raise RunError(f"--output-return and --filter-errors need kprobe-multi (5.18+); this kernel offers {way.value}")
    symbols = _kernel_symbols(options.output, way, discovery)
    plan = _plan(options, discovery, features, way, symbols)
    if options.dump_program:
        return _print_listing(program_listing(plan), stdout)
    if options.output.ready_file is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(options.output.ready_file)  # a stale one would release a waiting script too early
    with stage("compiling the BPF program"):
        bpf = compile_program(plan)
    with _output(options.output.file, stdout) as sink:
        _trace(options, plan, bpf, features, symbols, sink)
    return 0


def _print_listing(text: str, stdout: TextIO) -> int:
    """--list-funcs and --ebpf: a reader that goes away early (``| head``) is not an error."""
    try:
        stdout.write(text)
        stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())  # so that closing stdout at exit cannot fail again
        os.close(devnull)
    return 0


def _kernel_symbols(spec: OutputSpec, way: AttachWay, discovery: Discovery) -> KernelSymbols | None:
    """Classic kprobes name functions by address (and find sk_destruct's for --filter-track-sock),
    --output-stack names frames: one read of kallsyms serves both, the others need none."""
    if spec.stack:
        return KernelSymbols.from_kallsyms(None)
    if way is AttachWay.KPROBE:
        return KernelSymbols.from_kallsyms({probe.name for probe in discovery.functions})
    return None


def _plan(
    options: Options, discovery: Discovery, features: Features, way: AttachWay, symbols: KernelSymbols | None
) -> ProgramPlan:
    if discovery.functions:
        log.info("%d functions take a socket (checked against %s)", len(discovery.functions), discovery.function_source)
    for reason, count in sorted(discovery.skipped.items()):
        log.info("Left out %d functions: %s", count, reason)
    sock_free_ip = symbols.address_of({SOCK_FREE_FUNCTION}).get(SOCK_FREE_FUNCTION) if symbols is not None else None
    plan = plan_program(options, discovery, way, features, sock_free_ip)
    if not plan.probes and not options.dump_program:
        what = "function" if way is not AttachWay.TRACEPOINT else "raw tracepoint"
        raise OptionError(f"--filter-funcs: no {what} that takes a socket matches here (see --list-funcs)")
    return plan


def _import_in_background(*modules: str) -> None:
    """Import heavy modules in a thread: loading a shared library releases the GIL, so the main
    thread goes on meanwhile; its own import of them later waits for this one or finds them loaded."""

    def load() -> None:
        for module in modules:
            with contextlib.suppress(ImportError):  # reported where the module is needed
                importlib.import_module(module)

    threading.Thread(target=load, name="preload", daemon=True).start()


def _trace(
    options: Options, plan: ProgramPlan, bpf: BPF, features: Features, symbols: KernelSymbols | None, sink: TextIO
) -> None:
    """Attach, trace until asked to stop, stop, report."""
    spec = options.output
    probes = _probe_table(plan, symbols)
    with contextlib.ExitStack() as stack:
        reader = None
        if not spec.summary:
            reader = EventReader(bpf, use_perf_buffer=not features.ring_buffer or options.perf_buffer)
            stack.callback(reader.close)
        attacher = stack.enter_context(make_attacher(bpf, plan, options.wait_detach))
        with stage("attaching"):
            if attacher.attach().attached == 0:
                raise RunError("no probe could be attached")
        writer = _writer(spec, probes, sink, symbols, bpf)  # its clock starts with tracing
        stats_enabled = _bpf_stats_enabled()
        set_tracing(bpf, True)
        signals.defer_from_now()  # tracing: from here a signal only ends the run, with status 0
        _announce_ready(spec.ready_file)
        failure = None
        try:
            _consume(reader, writer)
        except RunError as err:  # the output failed: stop, account, then say so
            failure = err
        set_tracing(bpf, False)
        for records in reader.drain(DRAIN_SECONDS) if reader is not None else ():
            try:
                writer.write(records)  # counted as not printed once the output is gone
            except RunError as err:  # the output failed while draining: the rest is still counted
                failure = failure or err
        if failure is None:
            try:
                writer.finish()  # the summary's last table
            except RunError as err:
                failure = err
        delivery = Delivery(writer.written, writer.unprinted, spec.summary, spec.return_values, writer.closed)
        taken = reader.taken if reader is not None else None
        _report(bpf, attacher, delivery, taken, stats_enabled and _bpf_stats_enabled())
        if failure is not None:
            raise failure


def _probe_table(plan: ProgramPlan, symbols: KernelSymbols | None) -> ProbeTable:
    names = [probe.name for probe in plan.probes]
    addresses = symbols.address_of(set(names)) if plan.way is AttachWay.KPROBE and symbols is not None else None
    return ProbeTable(names, addresses, [probe.ret_kind for probe in plan.probes])


def _writer(
    spec: OutputSpec, probes: ProbeTable, sink: TextIO, symbols: KernelSymbols | None, bpf: BPF
) -> LineWriter | SummaryWriter:
    """The table, JSON lines, or the summary, as the options ask."""
    if spec.summary:
        counter = Counter.RETURN_EMITTED if spec.return_values else Counter.EMITTED
        return SummaryWriter(
            lambda: read_summary(bpf, spec.return_values),
            lambda: read_counters(bpf)[counter],
            SummaryRenderer(probes, spec.summary_top),
            sink,
            spec.summary_interval,
        )
    stack_symbols = symbols if spec.stack else None
    if spec.json:
        json_lines = JsonFormatter(probes, EventClock(spec.timestamp), stack_symbols)
        return LineWriter(json_lines.format_batch, sink, None, spec.limit_lines)
    clock = EventClock(spec.timestamp) if spec.timestamp is not Timestamp.NONE else None
    table = TextFormatter(spec, probes, stack_symbols, clock)
    return LineWriter(table.format_batch, sink, table.header(), spec.limit_lines)


def _seconds_since_process_start() -> float:
    """From exec to now, as the kernel counts it (interpreter start-up included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) - start_ticks / ticks


def _announce_ready(ready_file: str | None) -> None:
    """Tell people and scripts that events now flow."""
    if ready_file is not None:
        with stage(f"creating --ready-file {ready_file}"), open(ready_file, "w"):
            pass
    log.info("Ready %.2f s after start", _seconds_since_process_start())
    log.info("Press Ctrl+C to stop")


def _consume(reader: EventReader | None, writer: LineWriter | SummaryWriter) -> None:
    """The tracing loop, until a signal, the line limit or the output's end."""
    writer.start()
    while signals.requested() is None and not writer.done:
        if reader is None:
            time.sleep(POLL_TIMEOUT_MS / 1000)  # --summary: the program counts in its maps
        else:
            writer.write(reader.poll(POLL_TIMEOUT_MS))
        writer.tick()


def _bpf_stats_enabled() -> bool:
    """kernel.bpf_stats_enabled=1: the kernel counts each program's runs (bpftool's run_cnt)."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as sysctl:
            return sysctl.read().strip() == "1"
    except OSError:
        return False


def _report(bpf: BPF, attacher: Attacher, delivery: Delivery, taken: int | None, kernel_counted: bool) -> None:
    """The accounting line, from counts that no longer change: after a detach in the
    foreground, or (classic kprobes removed in the background) with the program stopped.
    ``taken``: the records the reader took (None with --summary); the program sent the rest too,
    and they stayed in the buffer."""
    in_background = getattr(attacher, "in_background", False)
    if not in_background:
        attacher.detach()
    counters = read_counters(bpf)
    stats = dict(zip((entry.name for entry in attacher.plan.entries), attacher.entry_stats()))
    if in_background:
        attacher.detach()
    returns = stats.pop(RETURN_KPROBE_MULTI, None)
    if taken is not None:
        sent = counters[Counter.RETURN_EMITTED if delivery.returns else Counter.EMITTED]
        delivery = dataclasses.replace(delivery, left=sent - taken)
    kernel = KernelRuns(
        sum(stat.run_cnt for stat in stats.values()) if kernel_counted else None,
        returns.run_cnt if returns is not None and kernel_counted else None,
        sum(stat.recursion_misses for stat in stats.values()) + (returns.recursion_misses if returns else 0),
    )
    for line in accounting_lines(counters, delivery, kernel):
        log.info("%s", line)


@contextlib.contextmanager
def _output(path: str | None, stdout: TextIO) -> Iterator[TextIO]:
    if path is None:
        yield stdout
        return
    with stage(f"opening --output-file {path}"):
        sink = open(path, "w")  # noqa: SIM115 -- closed by the with below
    with sink:
        yield sink


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
